"""AlexNet as in d2l 8.1 (one tower, 224x224 input), for any channel count and class count."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import activation_factory, classifier_head, divide_width, flat_features


class AlexNet(nn.Module):
    """Five convolutions (96-256-384-384-256) with three max-pools, then a 2-layer ReLU head.

    d2l trains it with dropout 0.5 in the head (`regularization.dropout=0.5`). `width_divisor`
    divides the conv channels and `head_width` (4096 in the paper) sizes the head, for quick
    experiments. `activation` replaces every ReLU (layers.ACTIVATIONS).
    """

    def __init__(self, input_shape: list[int], num_outputs: int, dropout: float = 0.0,
                 width_divisor: int = 1, head_width: int = 4096, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        c1, c2, c3 = (divide_width(c, width_divisor) for c in (96, 256, 384))
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], c1, kernel_size=11, stride=4, padding=1), act(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5, padding=2), act(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1), act(),
            nn.Conv2d(c3, c3, kernel_size=3, padding=1), act(),
            nn.Conv2d(c3, c2, kernel_size=3, padding=1), act(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.classifier = classifier_head(flat_features(self.features, input_shape, "AlexNet"),
                                          head_width, num_outputs, dropout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
