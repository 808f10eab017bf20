"""A test model that turns its output into NaN after a set number of training steps."""

from __future__ import annotations

import math

import torch
from torch import nn


class ExplodesAfter(nn.Module):
    def __init__(self, input_shape: list[int], num_outputs: int, steps: int = 3, **_: object) -> None:
        super().__init__()
        self.linear = nn.Linear(math.prod(input_shape), num_outputs)
        self.steps = steps
        self.register_buffer("seen", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x.flatten(1))
        if self.training:
            self.seen += 1
            # Multiply by NaN on the device: no host sync, as in a real divergence.
            out = out * torch.where(self.seen > self.steps, torch.nan, 1.0)
        return out
