"""The streaming path, for image folders too large to hold decoded: files decoded by DataLoader workers.

A `FileSplit` is a list of (file, label) decoded at one shape; a `FileLoader` batches it with
worker processes (persistent across epochs), uint8 batches in pinned memory and non-blocking
copies to the training device, with the same interface as `TensorLoader`. The batch order is
drawn exactly as `TensorLoader` draws it (one `torch.randperm` from the shuffle generator per
pass), so a streamed and an in-memory copy of the same images see the same batches. As with
`TensorLoader`, a pass is `epoch_order()` then `batches(order, start)`, so a mid-epoch checkpoint
keeps the order and a resumed epoch reads the remaining files in it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional, Sequence, Union

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from dlrun.data.images import BadImage, bad_image_error, decode
from dlrun.data.loader import BatchTransform, PairTransform
from dlrun.data.shard import Shard
from dlrun.errors import DataError

log = logging.getLogger("dlrun")
# Why a decoded item is a tuple: (pixels or the reason it failed, target).
Item = tuple[Union[torch.Tensor, BadImage], Any]


@dataclass(frozen=True)
class FileSplit:
    """Image files with their targets, decoded to `shape` (C, H, W) every time they are read.

    A target is a class index, or a tensor that batches by stacking (a detection image's
    padded objects, dlrun.detection.targets).

    `crop_scale` (set by `regularization.augment=imagenet`) makes training reads a random
    resized crop of that area range, cut in the worker from the full-resolution file.
    """

    samples: tuple[tuple[str, Any], ...]
    shape: tuple[int, int, int]
    num_workers: int = 0
    skip_bad_files: bool = False
    crop_scale: Optional[tuple[float, float]] = None

    def __len__(self) -> int:
        return len(self.samples)

    def select(self, index: torch.Tensor | slice) -> "FileSplit":
        chosen = self.samples[index] if isinstance(index, slice) else tuple(self.samples[i] for i in index.tolist())
        return replace(self, samples=tuple(chosen))

    def with_crop(self, scale: Sequence[float]) -> "FileSplit":
        return replace(self, crop_scale=(float(scale[0]), float(scale[1])))

    def dataset(self, training: bool) -> "ImageFiles":
        crop = training and self.crop_scale is not None
        return ImageFiles(self.samples, self.shape, self.crop_scale if crop else None)


class ImageFiles(Dataset):
    """Item `i` (or `(i, seed)`, the seed of its random crop) is (uint8 pixels or BadImage, label)."""

    def __init__(self, samples: Sequence[tuple[str, Any]], shape: Sequence[int],
                 crop_scale: Optional[tuple[float, float]] = None) -> None:
        self.samples = samples
        self.channels, self.size = shape[0], (shape[1], shape[2])
        self.crop = None if crop_scale is None else _random_resized_crop(self.size, crop_scale)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: Union[int, tuple[int, int]]) -> Item:
        index, seed = key if isinstance(key, tuple) else (key, 0)
        path, label = self.samples[index]
        return decode(path, self.channels, self.size, self.crop, seed), label


def collate_images(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, BadImage]]]:
    """(uint8 images, targets, [(row, BadImage)]): an unreadable file leaves a zero row and is listed.

    Runs in the worker: one uint8 batch crosses to the main process (a quarter of float32's bytes).
    """
    bad = [(row, pixels) for row, (pixels, _) in enumerate(items) if isinstance(pixels, BadImage)]
    labels = torch.stack([torch.as_tensor(label) for _, label in items])  # class indices or padded boxes
    if len(bad) == len(items):
        return torch.zeros((len(items), 0), dtype=torch.uint8), labels, bad
    blank = torch.zeros_like(next(pixels for pixels, _ in items if isinstance(pixels, torch.Tensor)))
    images = torch.stack([blank if isinstance(pixels, BadImage) else pixels for pixels, _ in items])
    return images, labels, bad


class _Batches(Sampler):
    """Lists of indices: the batches of one pass in the order FileLoader.batches hands over, from `start`.

    With `seeded`, each index comes with the seed of its random crop, derived from the pass's
    order (which a mid-epoch checkpoint keeps) and the index: a resumed epoch crops exactly as
    the uninterrupted one would have, whatever the number of workers. With a `shard`, each batch
    is this process's part of the global one (dlrun.data.shard).
    """

    def __init__(self, size: int, batch_size: int, batches: int, seeded: bool, shard: Shard = Shard()) -> None:
        self.size, self.batch_size, self.batches, self.seeded = size, batch_size, batches, seeded
        self.shard = shard
        self.order: Optional[list[int]] = None  # None: storage order
        self.start = 0
        self.crop_base = 0

    def set_pass(self, order: Optional[torch.Tensor], start: int) -> None:
        self.order = order.tolist() if order is not None else None
        self.start = start
        # Python hashes tuples of ints the same in every process (no hash randomization for ints).
        self.crop_base = hash(tuple(self.order[:64])) & (2**62 - 1) if self.seeded and self.order else 0

    def __len__(self) -> int:
        return self.batches - self.start

    def __iter__(self) -> Iterator[list]:
        for batch in range(self.start, self.batches):
            begin = batch * self.batch_size
            lo, hi = self.shard.part(begin, min(begin + self.batch_size, self.size))
            if lo == hi:  # a last batch smaller than the number of processes
                if not self.shard.placeholder:
                    continue
                lo, hi = begin, begin + 1
            indices = self.order[lo:hi] if self.order is not None else list(range(lo, hi))
            yield [(index, self.crop_base + index) for index in indices] if self.seeded else indices


class FileLoader:
    """Batches of a FileSplit, moved to `device` (non-blocking from pinned memory on CUDA).

    An unreadable file stops the run with one line naming it, or, with the split's
    `skip_bad_files`, is left out of its batch and reported once. With a `shard` (several
    processes), every batch is this process's part of the global batch.
    """

    def __init__(self, split: FileSplit, batch_size: int, *, device: torch.device, training: bool,
                 shuffle: bool = False, generator: Optional[torch.Generator] = None,
                 limit_batches: Optional[int] = None, transform: Optional[BatchTransform] = None,
                 pair_transform: Optional[PairTransform] = None, shard: Shard = Shard()) -> None:
        if shuffle and generator is None:
            raise ValueError("a shuffling FileLoader needs a generator")
        self.split = split
        self.batch_size = batch_size
        self.device = device
        self.training = training
        self.limit_batches = limit_batches
        self.transform = transform
        self.pair_transform = pair_transform  # after `transform`: inputs and targets together (boxes)
        self.skipped: set[str] = set()
        dataset = split.dataset(training)
        self.shuffle = shuffle
        self.generator = generator
        self.shard = shard
        self.sampler = _Batches(len(split), batch_size, len(self), seeded=dataset.crop is not None, shard=shard)
        workers = split.num_workers
        # The DataLoader draws its workers' seed from `generator=`: a private one, so the global
        # RNG (dropout, augmentation) is used as with in-memory data whatever num_workers is.
        # Nothing in the workers is random but the crops, which are seeded by the sampler.
        self.loader = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=collate_images, num_workers=workers,
                                 pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                                 generator=torch.Generator())

    def __len__(self) -> int:
        batches = math.ceil(len(self.split) / self.batch_size)
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.batches(self.epoch_order())

    def epoch_order(self) -> Optional[torch.Tensor]:
        """A fresh shuffle of the files (one randperm of `generator`, as TensorLoader draws it), or None."""
        return torch.randperm(len(self.split), generator=self.generator) if self.shuffle else None

    def batches(self, order: Optional[torch.Tensor], start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of a pass in `order` (from `epoch_order`), beginning with batch number `start`."""
        self.sampler.set_pass(order.cpu() if order is not None else None, start)
        for inputs, targets, bad in self.loader:
            if bad:
                inputs, targets = self._without(bad, inputs, targets)
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            if self.transform is not None:
                inputs = self.transform(inputs)
            if self.pair_transform is not None:
                inputs, targets = self.pair_transform(inputs, targets)
            yield inputs, targets

    def _without(self, bad: list[tuple[int, BadImage]], inputs: torch.Tensor,
                 targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.split.skip_bad_files:
            raise bad_image_error(bad[0][1])
        new = [image for _, image in bad if image.path not in self.skipped]
        if new:
            self.skipped.update(image.path for image in new)
            log.warning("dataset: skipped %d unreadable image(s) so far (dataset.skip_bad_files=true), e.g. %s (%s)",
                        len(self.skipped), new[0].path, new[0].reason)
        keep = torch.ones(len(targets), dtype=torch.bool)
        keep[[row for row, _ in bad]] = False
        if not keep.any():
            raise DataError(f"every image of a batch is unreadable, e.g. {bad[0][1].path} ({bad[0][1].reason})")
        return inputs[keep], targets[keep]

    def loss_scale(self, batch: int) -> float:
        """Factor for this process's loss on batch number `batch` (Shard.loss_scale; 1 in one process).

        Counted from the files the batch names: a file skipped as unreadable leaves it slightly off.
        """
        return self.shard.loss_scale(min(self.batch_size, len(self.split) - batch * self.batch_size))

    @property
    def num_examples(self) -> int:
        return min(len(self.split), len(self) * self.batch_size)

    def example_input(self) -> torch.Tensor:
        """The first readable example as the model sees it (not augmented: no random numbers drawn)."""
        dataset = self.split.dataset(training=False)
        for index in range(len(dataset)):
            pixels, _ = dataset[index]
            if isinstance(pixels, torch.Tensor):
                example = pixels.unsqueeze(0).to(self.device)
                return self.transform(example) if self.transform is not None else example
        raise DataError(f"none of the {len(dataset)} images can be read, e.g. {self.split.samples[0][0]}")


def _random_resized_crop(size: Sequence[int], scale: tuple[float, float]) -> Any:
    from torchvision.transforms import v2  # imported here: torchvision takes seconds to import

    return v2.RandomResizedCrop(size, scale=scale, antialias=True)
