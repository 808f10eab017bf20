"""LeNet-5 (d2l 7.6), optionally with batch norm (d2l 8.5)."""

from __future__ import annotations

from torch import nn

from dlrun.models.layers import activation_factory, flat_features


class LeNet(nn.Module):
    """conv(6,5x5,pad 2) → pool → conv(16,5x5) → pool → 120 → 84 → outputs.

    d2l's version uses sigmoid and average pooling; `activation`, `pooling` and
    `batch_norm` select the modern variants. Works for any input size >= 8 pixels:
    the first linear layer is sized by a dry forward pass.
    """

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        activation: str = "sigmoid",
        pooling: str = "avg",
        batch_norm: bool = False,
        activation_param: float | None = None,
    ) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        if pooling not in ("avg", "max"):
            raise ValueError(f"pooling {pooling!r} is not one of: avg, max")
        pool = nn.AvgPool2d if pooling == "avg" else nn.MaxPool2d

        def norm(channels: int, dims: int) -> list[nn.Module]:
            if not batch_norm:
                return []
            return [nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)]

        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, kernel_size=5, padding=2), *norm(6, 2), act(),
            pool(kernel_size=2, stride=2),
            nn.Conv2d(6, 16, kernel_size=5), *norm(16, 2), act(),
            pool(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(flat_features(self.features, input_shape, "LeNet"), 120), *norm(120, 1), act(),
            nn.Linear(120, 84), *norm(84, 1), act(),
            nn.Linear(84, num_outputs),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
