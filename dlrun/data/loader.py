"""Minibatches of device-resident tensors, chosen by a permutation index.

This is the fast path for every in-memory dataset: no per-sample collation, no worker
processes, no host-to-device copy per step. Batch-wise transforms (resize, augmentation)
run on the same device.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch

from dlrun.data.splits import TensorSplit

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class TensorLoader:
    """Iterate `(inputs, targets)` batches of a TensorSplit.

    `generator` drives the shuffling and lives on the CPU, so its state can be saved in a
    checkpoint and the exact batch order resumed. `limit_batches` caps batches per pass.
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        limit_batches: Optional[int] = None,
        transform: Optional[BatchTransform] = None,
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffling TensorLoader needs a generator")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.limit_batches = limit_batches
        self.transform = transform

    def __len__(self) -> int:
        batches = math.ceil(len(self.split) / self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = None
        if self.shuffle:
            order = torch.randperm(len(self.split), generator=self.generator).to(self.split.inputs.device)
        for batch in range(len(self)):
            window = slice(batch * self.batch_size, (batch + 1) * self.batch_size)
            index = window if order is None else order[window]
            inputs, targets = self.split.inputs[index], self.split.targets[index]
            if self.transform is not None:
                inputs = self.transform(inputs)
            yield inputs, targets

    @property
    def num_examples(self) -> int:
        """Examples one full pass yields (fewer than the split when limit_batches cuts it)."""
        return min(len(self.split), len(self) * self.batch_size)


def compose(*transforms: Optional[BatchTransform]) -> Optional[BatchTransform]:
    """Chain batch transforms left to right, skipping None; None when there are none."""
    chain = [transform for transform in transforms if transform is not None]
    if not chain:
        return None
    if len(chain) == 1:
        return chain[0]

    def composed(batch: torch.Tensor) -> torch.Tensor:
        for transform in chain:
            batch = transform(batch)
        return batch

    return composed
