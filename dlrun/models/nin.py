"""Network in Network as in d2l 8.3: conv + two 1x1 convs per block, global average pooling."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import Activation, activation_factory, divide_width, dry_run_shape


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int,
              batch_norm: bool = False, act: Activation = nn.ReLU) -> nn.Sequential:
    """d2l's block: the spatial conv, then two 1x1 convs, each followed by ReLU (batch norm before it)."""
    convs = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding),
             nn.Conv2d(out_channels, out_channels, kernel_size=1),
             nn.Conv2d(out_channels, out_channels, kernel_size=1)]
    layers: list[nn.Module] = []
    for conv in convs:
        layers += [conv, *([nn.BatchNorm2d(out_channels)] if batch_norm else []), act()]
    return nn.Sequential(*layers)


class NiN(nn.Module):
    """Four NiN blocks (96-256-384-classes) with max-pools; no fully connected layer.

    The last block has one channel per class and is averaged over space into the logits.
    d2l puts dropout 0.5 before it (`regularization.dropout=0.5`). `width_divisor` divides
    the channels of the first three blocks. `batch_norm` adds batch normalization after every
    convolution: twelve plain ReLU convolutions train slowly and often stall at chance in short
    runs, while the normalized ones learn within a few hundred steps. `activation` replaces every ReLU.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, dropout: float = 0.0,
                 width_divisor: int = 1, batch_norm: bool = False, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        c1, c2, c3 = (divide_width(c, width_divisor) for c in (96, 256, 384))
        self.net = nn.Sequential(
            nin_block(input_shape[0], c1, kernel_size=11, stride=4, padding=0, batch_norm=batch_norm, act=act),
            nn.MaxPool2d(3, stride=2),
            nin_block(c1, c2, kernel_size=5, stride=1, padding=2, batch_norm=batch_norm, act=act),
            nn.MaxPool2d(3, stride=2),
            nin_block(c2, c3, kernel_size=3, stride=1, padding=1, batch_norm=batch_norm, act=act),
            nn.MaxPool2d(3, stride=2),
            *([nn.Dropout(dropout)] if dropout > 0 else []),
            nin_block(c3, num_outputs, kernel_size=3, stride=1, padding=1, batch_norm=batch_norm, act=act),
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )
        dry_run_shape(self.net, input_shape, "NiN")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
