"""ResNet as in d2l 8.6: a 7x7 stem, four stages of basic residual blocks, global pooling."""

from __future__ import annotations

import torch
from torch import nn

from dlrun.models.layers import Activation, activation_factory, dry_run_shape, stem_7x7

# Basic (two 3x3 conv) blocks per stage; the 18- and 34-layer nets of He et al.
BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


class Residual(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (through a 1x1 conv when the shape changes), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: Activation = nn.ReLU) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        # Modules without parameters: the checkpoints of the ReLU-only ResNet (F.relu) still load.
        self.act1, self.act2 = act(), act()
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """d2l's ResNet-18 (`depth=18`, default) or ResNet-34: 64-128-256-512 channels, designed for 96x96.

    `activation` replaces every ReLU (the stem's and both of each residual block's).
    """

    def __init__(self, input_shape: list[int], num_outputs: int, depth: int = 18, activation: str | None = None,
                 activation_param: float | None = None) -> None:
        super().__init__()
        if depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"depth {depth} is not one of: {', '.join(map(str, BLOCKS_PER_STAGE))}")
        act = activation_factory(activation, activation_param)
        layers: list[nn.Module] = stem_7x7(input_shape[0], act)
        channels = 64
        for stage, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
            out_channels = 64 * 2 ** stage
            for block in range(num_blocks):
                # every stage but the first halves the size in its first block (d2l's first_block rule)
                stride = 2 if block == 0 and stage > 0 else 1
                layers.append(Residual(channels, out_channels, stride, act))
                channels = out_channels
        layers += [nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten(), nn.Linear(channels, num_outputs)]
        self.net = nn.Sequential(*layers)
        dry_run_shape(self.net, input_shape, "ResNet")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
