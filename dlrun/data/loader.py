"""Minibatches of device-resident tensors, chosen by a permutation index.

This is the fast path for every in-memory dataset: no per-sample collation, no worker
processes, no host-to-device copy per step. Batch-wise transforms (uint8 → float, resize,
augmentation) run on the same device; the deterministic ones can instead be applied once to the
whole split (`prepare_split`) when the prepared form fits in memory (`fits_prepared`).
"""

from __future__ import annotations

import math
from typing import Callable, Iterator, Optional

import torch

from dlrun.data.shard import Shard
from dlrun.data.splits import TensorSplit

BatchTransform = Callable[[torch.Tensor], torch.Tensor]
# A transform of inputs and targets together, for augmentations that move the targets with the
# pixels (detection boxes: dlrun.data.box_augment). It runs after the BatchTransform.
PairTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def compose(*transforms: Optional[BatchTransform]) -> Optional[BatchTransform]:
    """Apply the given batch transforms left to right (None entries skipped); None when there are none."""
    steps = [step for step in transforms if step is not None]
    if not steps:
        return None
    if len(steps) == 1:
        return steps[0]

    def composed(batch: torch.Tensor) -> torch.Tensor:
        for step in steps:
            batch = step(batch)
        return batch

    return composed


class TensorLoader:
    """Iterate `(inputs, targets)` batches of a TensorSplit.

    Order: in storage order, shuffled by `generator` (which lives on the CPU, so its state can
    be saved in a checkpoint and the exact batch order resumed), or — with `streams=True` — as
    d2l's sequential sampling: the examples are cut into `batch_size` contiguous streams and
    row j of batch k+1 is the example right after row j of batch k, so a recurrent model can
    carry its state from batch to batch. Every streamed batch is full (the remainder is dropped).
    `limit_batches` caps batches per pass. `transform` changes the inputs of each batch, then
    `pair_transform` the inputs and targets together. `epoch_order` and `batches(order, start)`
    split a pass in two, so that training can stop inside an epoch and continue it exactly. With a
    `shard` (several processes, dlrun.data.shard), every batch is this process's part of the
    global batch (of its streams, for sequential sampling).
    """

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        *,
        shuffle: bool = False,
        streams: bool = False,
        generator: Optional[torch.Generator] = None,
        limit_batches: Optional[int] = None,
        transform: Optional[BatchTransform] = None,
        pair_transform: Optional[PairTransform] = None,
        shard: Shard = Shard(),
    ) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffling TensorLoader needs a generator")
        if shuffle and streams:
            raise ValueError("a TensorLoader either shuffles or follows streams, not both")
        self.split = split
        self.batch_size = min(batch_size, len(split)) if streams else batch_size
        self.shuffle = shuffle
        self.streams = streams
        self.generator = generator
        self.limit_batches = limit_batches
        self.transform = transform
        self.pair_transform = pair_transform
        self.shard = shard

    def __len__(self) -> int:
        if self.streams:
            batches = len(self.split) // max(self.batch_size, 1)
        else:
            batches = math.ceil(len(self.split) / self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.epoch_order())

    def epoch_order(self) -> Optional[torch.Tensor]:
        """The order of one pass: a fresh shuffle (drawn from `generator`), the streams, or None (storage order).

        Kept with a mid-epoch checkpoint, so a resumed epoch goes on in the same order.
        """
        device = self.split.inputs.device
        if self.shuffle:
            return torch.randperm(len(self.split), generator=self.generator).to(device)
        if self.streams:  # (streams, batches): stream j holds examples j*L .. j*L+L-1
            length = len(self.split) // max(self.batch_size, 1)
            return torch.arange(self.batch_size * length, device=device).reshape(self.batch_size, length)
        return None

    def batches(self, order: Optional[torch.Tensor], start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of a pass in `order` (from `epoch_order`), beginning with batch number `start`."""
        if order is not None:
            order = order.to(self.split.inputs.device)
        for batch in range(start, len(self)):
            if self.streams:
                lo, hi = self.shard.part(0, self.batch_size)
                index = order[lo:hi, batch]
            else:
                begin = batch * self.batch_size
                lo, hi = self.shard.part(begin, min(begin + self.batch_size, len(self.split)))
                if lo == hi:  # a last batch smaller than the number of processes
                    if not self.shard.placeholder:
                        continue
                    lo, hi = begin, begin + 1
                index = slice(lo, hi) if order is None else order[lo:hi]
            inputs, targets = _rows(self.split.inputs, index), _rows(self.split.targets, index)
            if self.transform is not None:
                inputs = self.transform(inputs)
            if self.pair_transform is not None:
                inputs, targets = self.pair_transform(inputs, targets)
            yield inputs, targets

    def loss_scale(self, batch: int) -> float:
        """Factor for this process's loss on batch number `batch` (Shard.loss_scale; 1 in one process)."""
        if self.streams:
            return self.shard.loss_scale(self.batch_size)
        return self.shard.loss_scale(min(self.batch_size, len(self.split) - batch * self.batch_size))

    @property
    def num_examples(self) -> int:
        """Examples one full pass yields (fewer than the split when limit_batches cuts it)."""
        return min(len(self.split), len(self) * self.batch_size)

    def example_input(self) -> torch.Tensor:
        """One example as the model sees it (transformed), for the model summary."""
        example = self.split.inputs[:1]
        return self.transform(example) if self.transform is not None else example


def _rows(tensor: torch.Tensor, index: torch.Tensor | slice) -> torch.Tensor:
    """The rows `index` selects: a view for a slice, else a gather.

    index_select rather than `tensor[index]`: advanced indexing is 2-4x slower on the CPU for
    image batches (measured: benchmarks/README.md), and far slower on a loaded machine.
    """
    return tensor[index] if isinstance(index, slice) else tensor.index_select(0, index)


def prepared_bytes(split: TensorSplit, prepare: BatchTransform) -> int:
    """The memory `split`'s inputs take once `prepare` has been applied to all of them."""
    if len(split) == 0:
        return 0
    example = prepare(split.inputs[:1])
    return len(split) * example[0].numel() * example.element_size()


def prepare_split(split: TensorSplit, prepare: BatchTransform, chunk: int = 1024) -> TensorSplit:
    """`split` with `prepare` (deterministic, example by example: uint8 → float, resize) applied once.

    Applied in chunks, so no more than one chunk's intermediate tensors exist beside the result.
    Bitwise the same batches as applying `prepare` to each batch (tests/test_speed_paths.py).
    """
    if len(split) == 0:
        return split
    first = prepare(split.inputs[:chunk])
    prepared = first.new_empty((len(split), *first.shape[1:]))
    prepared[:len(first)] = first
    for start in range(chunk, len(split), chunk):
        prepared[start:start + chunk] = prepare(split.inputs[start:start + chunk])
    return TensorSplit(prepared, split.targets)
