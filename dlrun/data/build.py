"""Build the train/val/test loaders a config asks for.

A dataset option is a `_target_` that returns `DataSplits`; the keys listed in
`dlrun.config.schema.META_KEYS["dataset"]` are read here instead (task, shape, resize, subset, val split).
In-memory splits (`TensorSplit`) move to the training device and are batched there by
`TensorLoader`; streamed image files (`FileSplit`) go through `FileLoader`'s worker processes.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from dlrun.config.build import instantiate_group
from dlrun.data.augment import AUGMENTS, build_augment
from dlrun.data.files import FileLoader, FileSplit
from dlrun.data.loader import BatchTransform, PairTransform, TensorLoader, compose, prepare_split, prepared_bytes
from dlrun.data.shard import Shard
from dlrun.data.splits import ALL_ROWS, DataSplits, TensorSplit, fold_split, split_off
from dlrun.data.task_targets import fit_targets
from dlrun.errors import DataError

log = logging.getLogger("dlrun")
Loader = Union[TensorLoader, FileLoader]


@dataclass
class Data:
    train: Loader
    val: Loader
    test: Loader
    task: str
    extras: dict[str, Any]
    sequential: bool  # batches follow streams of one sequence (a recurrent state may carry over)

    def example_input(self) -> torch.Tensor:
        """One example as the model sees it, not augmented (no random numbers drawn): the test split's first,
        else validation's, else training's prepared as for evaluation (dataset.test_fraction=0)."""
        for loader in (self.test, self.val):
            if len(loader.split):
                return loader.example_input()
        first = self.train.split.select(slice(0, 1))
        if isinstance(self.train, FileLoader):
            return FileLoader(first, 1, device=self.train.device, training=False,
                              transform=self.val.transform).example_input()
        return TensorLoader(first, 1, transform=self.val.transform).example_input()


def load_splits(dataset_cfg: DictConfig) -> DataSplits:
    """Call the dataset's loader with its own keys (the meta keys are dlrun's); inside `loading_once`, a dataset
    config already loaded there is not loaded again."""
    if _loaded is None:
        return instantiate_group(dataset_cfg, "dataset")
    key = json.dumps(OmegaConf.to_container(dataset_cfg, resolve=True), sort_keys=True, default=str)
    if key not in _loaded:
        _loaded[key] = instantiate_group(dataset_cfg, "dataset")
    return _loaded[key]


_loaded: Optional[dict[str, DataSplits]] = None


@contextmanager
def loading_once() -> Iterator[None]:
    """Runs built inside load each distinct dataset config once (the members of a fused sweep group: reading and
    decoding files is the slow part; each run still splits and places its own copy)."""
    global _loaded
    _loaded = {}
    try:
        yield
    finally:
        _loaded = None


def build_data(cfg: DictConfig, device: torch.device, shuffle_generator: torch.Generator,
               fold: Optional[int] = None, shard: Shard = Shard()) -> Data:
    """Load, split, trim and move the dataset to `device`; wrap each split in a loader.

    With `fold` (0 .. trainer.kfold-1), val is that fold of the training data (train and any
    given val pooled) and train the other folds: K-fold cross-validation. With a `shard` (one
    of several processes), each loader yields this process's part of every global batch.
    """
    splits = load_splits(cfg.dataset)
    parts, extras = fit_targets(cfg.dataset, _parts(cfg, splits, fold), splits.extras)
    # Every batch becomes floats at the model's size; train-only augmentation goes after that.
    prepare = compose(_to_float(parts["train"]), _resize_transform(list(cfg.dataset.input_shape), parts["train"]))
    # When the prepared (float) inputs fit device.float_cache_mb, each split is prepared once, as it
    # is loaded, and no batch is converted or resized: a memory-for-time trade (benchmarks/README.md).
    prepare_whole_splits = prepare is not None and _fits_float_cache(parts, prepare, cfg.device.float_cache_mb)
    batch_prepare = None if prepare_whole_splits else prepare
    augment, box_augment = _augmentation(cfg, parts)
    # device.channels_last's layout is given by the model itself (dlrun.engine.device.use_memory_format).
    eval_transform = batch_prepare
    train_transform = compose(batch_prepare, augment)
    limit = _smallest(cfg.trainer.limit_batches, cfg.debug.limit_batches)

    def loader(part: Union[TensorSplit, FileSplit], training: bool) -> Loader:
        shuffle = training and not splits.sequential
        options = dict(shuffle=shuffle, generator=shuffle_generator if shuffle else None, limit_batches=limit,
                       transform=train_transform if training else eval_transform,
                       pair_transform=box_augment if training else None,
                       shard=replace(shard, placeholder=training))  # see dlrun.data.shard
        if isinstance(part, FileSplit):
            return FileLoader(part, cfg.trainer.batch_size, device=device, training=training, **options)
        part = part.to(device)
        if prepare_whole_splits:
            part = prepare_split(part, prepare)
        return TensorLoader(part, cfg.trainer.batch_size, streams=splits.sequential, **options)

    return Data(train=loader(parts["train"], training=True), val=loader(parts["val"], training=False),
                test=loader(parts["test"], training=False), task=cfg.dataset.task, extras=extras,
                sequential=splits.sequential)


def _parts(cfg: DictConfig, splits: DataSplits, fold: Optional[int]) -> dict[str, Union[TensorSplit, FileSplit]]:
    """train, val and test: val split off train (or the K-fold's fold), each cut to the subset asked for.

    `fold` ALL_ROWS (a K-fold refit) trains on every training row, train and val pooled, with no validation.
    """
    train, val = splits.train, splits.val
    if fold is not None:
        pooled = train if val is None else TensorSplit(torch.cat([train.inputs, val.inputs]),
                                                       torch.cat([train.targets, val.targets]))
        train, val = ((pooled, pooled.select(slice(0, 0))) if fold == ALL_ROWS
                      else fold_split(pooled, fold, cfg.trainer.kfold, seed=cfg.seed))
    elif val is None:
        train, val = split_off(train, cfg.dataset.val_fraction, seed=cfg.seed, in_order=splits.sequential)
    parts = {"train": train, "val": val, "test": splits.test}
    _check_split_sizes(cfg, parts, fold)
    subset = _smallest(cfg.dataset.subset, cfg.debug.subset)
    if subset is not None:
        parts = {name: part.select(slice(0, subset)) for name, part in parts.items()}
    return parts


def _check_split_sizes(cfg: DictConfig, parts: dict[str, Union[TensorSplit, FileSplit]], fold: Optional[int]) -> None:
    """Training and test examples exist: too few rows is one line, not an IndexError in the loop.

    A validation fraction that rounds to no example is said in the log: the training metric then
    picks the best epoch, as with dataset.val_fraction=0.
    """
    sizes = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    asked = (f"trainer.kfold={cfg.trainer.kfold}" if fold is not None
             else f"dataset.val_fraction={cfg.dataset.val_fraction}")
    wanted = ["train", *(["test"] if cfg.dataset.get("test_fraction") != 0 else []),  # 0: no test split, by choice
              *(["val"] if fold is not None and fold != ALL_ROWS else [])]  # a refit trains on every row
    empty = [name for name in wanted if len(parts[name]) == 0]
    if empty:
        raise DataError(f"dataset: {sum(len(part) for part in parts.values())} examples are too few for the splits "
                        f"asked for ({sizes}; {asked}): the {' and '.join(empty)} split"
                        f"{'s' if len(empty) > 1 else ''} would be empty; use more data or smaller fractions")
    if len(parts["val"]) == 0 and cfg.dataset.val_fraction > 0 and fold != ALL_ROWS:
        log.warning("dataset: %s leaves no validation example (%s): the training metric picks the best epoch",
                    asked, sizes)


def _augmentation(cfg: DictConfig, parts: dict[str, Union[TensorSplit, FileSplit]]
                  ) -> tuple[Optional[BatchTransform], Optional[PairTransform]]:
    """regularization.augment for the training batches: of the inputs, or (detection) of inputs and boxes together."""
    regularization = cfg.regularization
    if cfg.dataset.task == "detection":  # boxes move with the pixels: inputs and targets change together
        from dlrun.data.box_augment import build_box_augment  # torchvision takes seconds to import

        return None, build_box_augment(regularization.augment, list(cfg.dataset.input_shape), regularization.crop_scale)
    # Streamed files get their random resized crop in the workers, from the full-size image.
    streamed = isinstance(parts["train"], FileSplit)
    if streamed and AUGMENTS[regularization.augment].resized_crop:
        parts["train"] = parts["train"].with_crop(regularization.crop_scale)
    return build_augment(regularization.augment, list(cfg.dataset.input_shape), regularization.crop_scale,
                         crop_in_workers=streamed), None


def _smallest(*limits: Optional[int]) -> Optional[int]:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _fits_float_cache(parts: dict[str, Union[TensorSplit, FileSplit]], prepare: BatchTransform,
                      budget_mb: float) -> bool:
    """Whether every split is in memory and their prepared (float, resized) inputs take at most `budget_mb` MiB."""
    if not all(isinstance(part, TensorSplit) for part in parts.values()):
        return False
    prepared = sum(prepared_bytes(part, prepare) for part in parts.values())
    stored = sum(part.inputs.numel() * part.inputs.element_size() for part in parts.values())
    fits = prepared <= budget_mb * 2**20
    logging.getLogger("dlrun.details").info(  # dlrun.log only: no news to a learner on the console
        "inputs: %s (%.0f MB prepared against %.0f MB as stored; device.float_cache_mb=%g)",
        "prepared once" if fits else "prepared per batch", prepared / 1e6, stored / 1e6, budget_mb)
    return fits


def _to_float(split: Union[TensorSplit, FileSplit]) -> Optional[BatchTransform]:
    """uint8 pixels (kept so in memory, and sent so by file workers: a quarter of float32) become
    floats in [0, 1] per batch."""
    if isinstance(split, TensorSplit) and split.inputs.dtype != torch.uint8:
        return None
    return lambda batch: batch.float().div_(255)


def _resize_transform(input_shape: list[int], split: Union[TensorSplit, FileSplit]) -> Optional[BatchTransform]:
    """Resize image batches to the model's input size on the device (d2l's Resize, batch-wise)."""
    stored = list(split.inputs.shape[1:]) if isinstance(split, TensorSplit) else None
    if len(input_shape) != 3 or (stored is not None and (len(stored) != 3 or stored[1:] == input_shape[1:])):
        return None
    size = tuple(input_shape[1:])

    def resize(batch: torch.Tensor) -> torch.Tensor:
        if tuple(batch.shape[2:]) == size:  # file-backed batches are often decoded at the model's size already
            return batch
        return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)

    return resize
