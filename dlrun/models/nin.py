"""Network in Network as in d2l 8.3: conv + two 1x1 convs per block, global average pooling."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import divide_width, dry_run_shape


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


class NiN(nn.Module):
    """Four NiN blocks (96-256-384-classes) with max-pools; no fully connected layer.

    The last block has one channel per class and is averaged over space into the logits.
    d2l puts dropout 0.5 before it (`regularization.dropout=0.5`). `width_divisor` divides
    the channels of the first three blocks.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, dropout: float = 0.0,
                 width_divisor: int = 1) -> None:
        super().__init__()
        c1, c2, c3 = (divide_width(c, width_divisor) for c in (96, 256, 384))
        self.net = nn.Sequential(
            nin_block(input_shape[0], c1, kernel_size=11, stride=4, padding=0),
            nn.MaxPool2d(3, stride=2),
            nin_block(c1, c2, kernel_size=5, stride=1, padding=2),
            nn.MaxPool2d(3, stride=2),
            nin_block(c2, c3, kernel_size=3, stride=1, padding=1),
            nn.MaxPool2d(3, stride=2),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            nin_block(c3, num_outputs, kernel_size=3, stride=1, padding=1),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
        dry_run_shape(self.net, input_shape, "NiN")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
