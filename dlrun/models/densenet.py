"""DenseNet as in d2l 8.7: dense blocks whose convs see every earlier output, transition layers between."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import Activation, activation_factory, dry_run_shape, stem_7x7


def conv_block(in_channels: int, out_channels: int, act: Activation = nn.ReLU) -> nn.Sequential:
    """BN-ReLU-conv3x3: the pre-activation unit of a dense block."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), act(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))


def transition_block(in_channels: int, out_channels: int, act: Activation = nn.ReLU) -> nn.Sequential:
    """BN-ReLU-conv1x1 to `out_channels`, then a 2x2 average pool halving height and width."""
    return nn.Sequential(nn.BatchNorm2d(in_channels), act(),
                         nn.Conv2d(in_channels, out_channels, kernel_size=1),
                         nn.AvgPool2d(kernel_size=2, stride=2))


class DenseBlock(nn.Module):
    """`num_convs` conv blocks; each one's `growth_rate` new channels are concatenated to its input."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int, act: Activation = nn.ReLU) -> None:
        super().__init__()
        self.convs = nn.ModuleList(conv_block(in_channels + i * growth_rate, growth_rate, act)
                                   for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = torch.cat([x, conv(x)], dim=1)
        return x


class DenseNet(nn.Module):
    """ResNet's stem, dense blocks of `block_sizes` convs, transitions halving the channels; 96x96 design.

    `activation` replaces every ReLU.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, growth_rate: int = 32,
                 block_sizes: list[int] | None = None, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        block_sizes = list(block_sizes) if block_sizes is not None else [4, 4, 4, 4]
        if not block_sizes or min(block_sizes) < 1 or growth_rate < 1:
            raise ValueError(f"block_sizes must be a non-empty list of ints >= 1 and growth_rate >= 1, "
                             f"got {block_sizes} and {growth_rate}")
        layers: list[nn.Module] = stem_7x7(input_shape[0], act)
        channels = 64
        for index, num_convs in enumerate(block_sizes):
            block = DenseBlock(num_convs, channels, growth_rate, act)
            layers.append(block)
            channels = block.out_channels
            if index != len(block_sizes) - 1:
                layers.append(transition_block(channels, channels // 2, act))
                channels //= 2
        layers += [nn.BatchNorm2d(channels), act(), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(),
                   nn.Linear(channels, num_outputs)]
        self.net = nn.Sequential(*layers)
        dry_run_shape(self.net, input_shape, "DenseNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
