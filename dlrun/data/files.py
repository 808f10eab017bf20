"""The slow path, for datasets too large to hold in memory: files decoded by DataLoader workers.

A `FileSplit` is a list of (file, label) with a train-time and an eval-time transform; a
`FileLoader` batches it with worker processes and pinned memory and hands the batches over
on the training device, with the same interface as `TensorLoader`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dlrun.data.loader import BatchTransform, PairTransform
from dlrun.errors import DataError

ImageTransform = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class FileSplit:
    """Image files with their targets; `train_transform` is used when the split is trained on.

    A target is a class index, or a tensor that batches by stacking (a detection image's
    padded objects, dlrun.detection.targets).
    """

    samples: tuple[tuple[str, Any], ...]
    train_transform: ImageTransform
    eval_transform: ImageTransform
    num_workers: int = 0

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, index: torch.Tensor | slice) -> "FileSplit":
        chosen = self.samples[index] if isinstance(index, slice) else tuple(self.samples[i] for i in index.tolist())
        return replace(self, samples=tuple(chosen))

    def dataset(self, training: bool) -> Dataset:
        return _ImageFiles(self.samples, self.train_transform if training else self.eval_transform)


class _ImageFiles(Dataset):
    def __init__(self, samples: Sequence[tuple[str, Any]], transform: ImageTransform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        path, label = self.samples[index]
        try:
            with Image.open(path) as image:
                return self.transform(image.convert("RGB")), label
        except OSError as error:  # unreadable or truncated image: name the file, not the worker
            raise DataError(f"cannot read image {path}: {error}") from None


class FileLoader:
    """Batches of a FileSplit, moved to `device` (non-blocking from pinned memory on CUDA)."""

    def __init__(self, split: FileSplit, batch_size: int, *, device: torch.device, training: bool,
                 shuffle: bool = False, generator: Optional[torch.Generator] = None,
                 limit_batches: Optional[int] = None, transform: Optional[BatchTransform] = None,
                 pair_transform: Optional[PairTransform] = None) -> None:
        self.split = split
        self.batch_size = batch_size
        self.device = device
        self.training = training
        self.limit_batches = limit_batches
        self.transform = transform
        self.pair_transform = pair_transform
        self.loader = DataLoader(split.dataset(training), batch_size=batch_size, shuffle=shuffle, generator=generator,
                                 num_workers=split.num_workers, pin_memory=device.type == "cuda",
                                 persistent_workers=split.num_workers > 0)

    def __len__(self) -> int:
        batches = math.ceil(len(self.split) / self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, (inputs, targets) in zip(range(len(self)), self.loader):
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.transform is not None:
                inputs = self.transform(inputs)
            if self.pair_transform is not None:
                inputs, targets = self.pair_transform(inputs, targets)
            yield inputs, targets

    @property
    def num_examples(self) -> int:
        return min(len(self.split), len(self) * self.batch_size)

    def example_input(self) -> torch.Tensor:
        example = self.split.dataset(training=False)[0][0].unsqueeze(0).to(self.device)
        return self.transform(example) if self.transform is not None else example
