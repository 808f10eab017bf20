"""Containers a dataset loader returns: tensors held in memory, split into train/val/test."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

# The `fold` of a K-fold run's refit (trainer.kfold_refit): every training row trains, none validates.
ALL_ROWS = -1


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
    # True when the examples are consecutive windows of one sequence read in order (d2l's
    # sequential sampling): batches follow streams instead of a shuffle, and val is cut off the end.
    sequential: bool = False


def split_off(split: TensorSplit, fraction: float, seed: int,
              in_order: bool = False) -> tuple[TensorSplit, TensorSplit]:
    """Split `split` into (rest, part) with `fraction` of the examples in `part`.

    The part is drawn by a permutation seeded with `seed`, or is the last examples when
    `in_order` (sequences, whose order the rest must keep).
    """
    size = int(round(len(split) * fraction))
    if in_order:
        cut = len(split) - size
        return split.select(slice(0, cut)), split.select(slice(cut, None))
    order = _permutation(len(split), seed)
    return split.select(order[size:]), split.select(order[:size])


def fold_split(split: TensorSplit, fold: int, folds: int, seed: int) -> tuple[TensorSplit, TensorSplit]:
    """K-fold cross-validation: (the other folds, fold number `fold` of `folds`), folds drawn by seed."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold {fold} is not in 0..{folds - 1}")
    chunks = _permutation(len(split), seed).tensor_split(folds)
    rest = torch.cat([chunk for index, chunk in enumerate(chunks) if index != fold])
    return split.select(rest), split.select(chunks[fold])


def _permutation(size: int, seed: int) -> torch.Tensor:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed))
