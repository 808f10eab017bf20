"""Containers a dataset loader returns: tensors held in memory, split into train/val/test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch


@dataclass
class TensorSplit:
    """Inputs and targets of one split, indexed together along the first dimension."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"{len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def select(self, index: torch.Tensor | slice) -> "TensorSplit":
        return TensorSplit(self.inputs[index], self.targets[index])

    def to(self, device: torch.device) -> "TensorSplit":
        return TensorSplit(self.inputs.to(device), self.targets.to(device))


@dataclass
class DataSplits:
    """What a dataset's `_target_` returns. `val` may be None: it is then carved from `train`."""

    train: TensorSplit
    test: TensorSplit
    val: Optional[TensorSplit] = None
    # Dataset-specific facts the task needs (e.g. a vocabulary); free-form.
    extras: dict[str, Any] = field(default_factory=dict)


def split_off(split: TensorSplit, fraction: float, seed: int) -> tuple[TensorSplit, TensorSplit]:
    """Split `split` into (rest, part) with `fraction` of the examples in `part`, by a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=generator)
    size = int(round(len(split) * fraction))
    return split.select(order[size:]), split.select(order[:size])
