"""Build the train/val/test loaders a config asks for.

A dataset option is a `_target_` that returns `DataSplits`; the keys listed in
`schema.META_KEYS["dataset"]` are read here instead (task, shape, resize, subset, val split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.data.loader import BatchTransform, TensorLoader, compose
from dlrun.data.splits import DataSplits, TensorSplit, split_off
from dlrun.device import channels_last_transform
from dlrun.schema import instantiate_group


@dataclass
class Data:
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader
    task: str
    extras: dict[str, Any]


def load_splits(dataset_cfg: DictConfig) -> DataSplits:
    """Call the dataset's loader with its own keys (the meta keys are dlrun's)."""
    return instantiate_group(dataset_cfg, "dataset")


def build_data(cfg: DictConfig, device: torch.device, shuffle_generator: torch.Generator) -> Data:
    """Load, split, trim and move the dataset to `device`; wrap each split in a TensorLoader."""
    dataset = cfg.dataset
    splits = load_splits(dataset)
    train, val = splits.train, splits.val
    if val is None:
        train, val = split_off(train, dataset.val_fraction, seed=cfg.seed)
    subset = _smallest(dataset.subset, cfg.debug.subset)
    parts = {"train": train, "val": val, "test": splits.test}
    if subset is not None:
        parts = {name: part.select(slice(0, subset)) for name, part in parts.items()}
    parts = {name: part.to(device) for name, part in parts.items()}

    limit = _smallest(cfg.trainer.limit_batches, cfg.debug.limit_batches)
    transform = compose(_resize_transform(list(dataset.input_shape), parts["train"].inputs),
                        channels_last_transform(cfg.device.channels_last))
    batch_size = cfg.trainer.batch_size

    def loader(part: TensorSplit, shuffle: bool) -> TensorLoader:
        return TensorLoader(part, batch_size, shuffle=shuffle, generator=shuffle_generator if shuffle else None,
                            limit_batches=limit, transform=transform)

    return Data(
        train=loader(parts["train"], shuffle=True),
        val=loader(parts["val"], shuffle=False),
        test=loader(parts["test"], shuffle=False),
        task=dataset.task,
        extras=splits.extras,
    )


def _smallest(*limits: Optional[int]) -> Optional[int]:
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _resize_transform(input_shape: list[int], inputs: torch.Tensor) -> Optional[BatchTransform]:
    """Resize image batches to the model's input size on the device (d2l's Resize, batch-wise)."""
    if inputs.dim() != 4 or len(input_shape) != 3 or list(inputs.shape[2:]) == input_shape[1:]:
        return None
    size = tuple(input_shape[1:])

    def resize(batch: torch.Tensor) -> torch.Tensor:
        return F.interpolate(batch, size=size, mode="bilinear", align_corners=False)

    return resize
