"""GoogLeNet as in d2l 8.4: a stem, nine Inception blocks, global average pooling."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import Activation, activation_factory, conv_relu, divide_width, dry_run_shape


class Inception(nn.Module):
    """Four parallel paths concatenated on channels: 1x1; 1x1→3x3; 1x1→5x5; 3x3 max-pool→1x1."""

    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int,
                 batch_norm: bool = False, act: Activation = nn.ReLU) -> None:
        super().__init__()
        self.path1 = nn.Sequential(*conv_relu(in_channels, c1, batch_norm, act, kernel_size=1))
        self.path2 = nn.Sequential(*conv_relu(in_channels, c2[0], batch_norm, act, kernel_size=1),
                                   *conv_relu(c2[0], c2[1], batch_norm, act, kernel_size=3, padding=1))
        self.path3 = nn.Sequential(*conv_relu(in_channels, c3[0], batch_norm, act, kernel_size=1),
                                   *conv_relu(c3[0], c3[1], batch_norm, act, kernel_size=5, padding=2))
        self.path4 = nn.Sequential(nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
                                   *conv_relu(in_channels, c4, batch_norm, act, kernel_size=1))
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.path1(x), self.path2(x), self.path3(x), self.path4(x)], dim=1)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)


# d2l's Inception blocks as (c1, (c2 reduce, c2), (c3 reduce, c3), c4); None marks a max-pool.
INCEPTIONS = [
    (64, (96, 128), (16, 32), 32),
    (128, (128, 192), (32, 96), 64), None,
    (192, (96, 208), (16, 48), 64),
    (160, (112, 224), (24, 64), 64),
    (128, (128, 256), (24, 64), 64),
    (112, (144, 288), (32, 64), 64),
    (256, (160, 320), (32, 128), 128), None,
    (256, (160, 320), (32, 128), 128),
    (384, (192, 384), (48, 128), 128),
]


class GoogLeNet(nn.Module):
    """d2l's GoogLeNet (Inception v1 without the auxiliary classifiers), designed for 96x96.

    `width_divisor` divides every channel count (stem and all Inception paths), for quick runs;
    `batch_norm` adds batch normalization after every convolution (as in Inception v2), which
    lets it train in a few epochs from scratch. `activation` replaces every ReLU.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, width_divisor: int = 1,
                 batch_norm: bool = False, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)

        def width(channels: int) -> int:
            return divide_width(channels, width_divisor)

        layers: list[nn.Module] = [
            *conv_relu(input_shape[0], width(64), batch_norm, act, kernel_size=7, stride=2, padding=3), _pool(),
            *conv_relu(width(64), width(64), batch_norm, act, kernel_size=1),
            *conv_relu(width(64), width(192), batch_norm, act, kernel_size=3, padding=1), _pool(),
        ]
        channels = width(192)
        for spec in INCEPTIONS:
            if spec is None:
                layers.append(_pool())
                continue
            c1, (c2a, c2b), (c3a, c3b), c4 = spec
            block = Inception(channels, width(c1), (width(c2a), width(c2b)), (width(c3a), width(c3b)), width(c4),
                              batch_norm, act)
            layers.append(block)
            channels = block.out_channels
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_outputs)]
        self.net = nn.Sequential(*layers)
        dry_run_shape(self.net, input_shape, "GoogLeNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
