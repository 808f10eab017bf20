"""VGG as in d2l 8.2: blocks of 3x3 convolutions, each block ending in a 2x2 max-pool."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import Activation, activation_factory, classifier_head, divide_width, flat_features

VGG11 = [[1, 64], [1, 128], [2, 256], [2, 512], [2, 512]]


def vgg_block(num_convs: int, in_channels: int, out_channels: int, act: Activation = nn.ReLU) -> nn.Sequential:
    """`num_convs` 3x3 convolutions, each followed by the activation (ReLU in d2l), then a 2x2 max-pool."""
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), act()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """`arch` lists (num_convs, channels) per block (VGG-11 by default).

    `width_divisor` divides every block's channels (d2l trains VGG-11 with ratio 4 on
    Fashion-MNIST); the head keeps `head_width` units (4096, as d2l) with dropout after
    each hidden layer (d2l: `regularization.dropout=0.5`). `activation` replaces every ReLU.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, arch: list[list[int]] | None = None,
                 width_divisor: int = 1, dropout: float = 0.0, head_width: int = 4096, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        arch = arch if arch is not None else VGG11
        if not arch or any(len(block) != 2 or min(block) < 1 for block in arch):
            raise ValueError(f"arch must be a non-empty list of [num_convs, channels] pairs >= 1, got {arch}")
        blocks = []
        channels = input_shape[0]
        for num_convs, width in arch:
            out_channels = divide_width(width, width_divisor)
            blocks.append(vgg_block(num_convs, channels, out_channels, act))
            channels = out_channels
        self.features = nn.Sequential(*blocks)
        self.classifier = classifier_head(flat_features(self.features, input_shape, "VGG"),
                                          head_width, num_outputs, dropout, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
