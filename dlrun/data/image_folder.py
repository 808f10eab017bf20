"""Images in folders: `<root>/<class>/<image>`, or a CSV of image,target(s) (Kaggle's Classify Leaves).

Class folders carry `classification` or `binary` (two folders); a labels CSV (`dataset.labels_csv`)
carries every target kind (dlrun.data.targets): a label, a yes/no value, space-separated labels or
0/1 columns (multilabel), one or several numbers (regression), in the column(s) `dataset.target`
names (default: the second column; the first is the image path).

The images are decoded at the model's input size (`dataset.resize`, which follows
`model.input_size`), with one channel when every image is grey (`dataset.channels=auto`), into
uint8 pixels that become floats in [0, 1] on the device — as for every in-memory dataset.
Nothing here augments: `regularization.augment` does, for every dataset.

`dataset.cache=auto` decodes a folder that fits the memory budget (`dataset.cache_max_gb`)
once into the decode cache (`dlrun.data.decode_cache`) and then trains from memory exactly as
MNIST does; a larger folder, or `cache=none`, streams through DataLoader workers
(`dlrun.data.files`); `cache=memory` holds it in memory whatever the budget. Files without an
image extension and hidden files are ignored; an unreadable image stops the run with one line
naming it unless `dataset.skip_bad_files=true`.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Union

import torch

from dlrun.data.decode_cache import FolderCache, default_budget_bytes, folder_fingerprint
from dlrun.data.files import FileSplit
from dlrun.data.image_listing import Listing, list_images
from dlrun.data.images import BadImage, ImageInfo, bad_image_error
from dlrun.data.splits import DataSplits, TensorSplit, split_off
from dlrun.errors import ConfigError, DataError
from dlrun.machine import available_cores, parallel_jobs

log = logging.getLogger("dlrun")
CACHE_MODES = ("auto", "memory", "none")
CHANNELS = ("auto", 1, 3)
MAX_WORKERS = 16  # each worker is a process holding its own torch; more rarely decode faster


def load_image_folder(root: str, labels_csv: Optional[str] = None, channels: Union[str, int] = "auto",
                      decode_size: Optional[int] = None, cache: str = "auto", cache_max_gb: Optional[float] = None,
                      skip_bad_files: bool = False, test_fraction: float = 0.2, seed: int = 0,
                      num_workers: Optional[int] = None, target_kind: str = "classification",
                      target: Union[str, list[str], None] = None,
                      classes: Optional[list[str]] = None) -> DataSplits:
    """The labelled images under `root`, a test split of `test_fraction` drawn by seed (`split_off`).

    Without `labels_csv`: one sub-folder per class. With it: a CSV (relative to `root`) whose
    first column is an image path relative to `root`, and whose `target` column(s) (default: the
    second) hold the targets of `target_kind` (dataset.task). `classes` are the names to index by
    (dlrun-eval passes the model's). Images are decoded at `decode_size` square (None: their own
    size, which must then be the same for all). `extras["classes"]` lists the class (label) names
    in index order, `extras["target_names"]` the target columns.
    """
    if cache not in CACHE_MODES:
        raise ConfigError(f"dataset.cache={cache!r} is not one of: {', '.join(CACHE_MODES)}")
    if cache_max_gb is not None and not cache_max_gb > 0:
        raise ConfigError(f"dataset.cache_max_gb={cache_max_gb} is out of range: "
                          "must be > 0 or null (a quarter of the RAM)")
    if num_workers is not None and not (isinstance(num_workers, int) and num_workers >= 0):
        raise ConfigError(f"dataset.num_workers={num_workers} is out of range: must be >= 0 or null (from the cores)")
    listing = list_images(root, labels_csv, target_kind, target, classes)
    workers = default_workers() if num_workers is None else num_workers
    store = FolderCache(listing.folder, labels_csv, workers)
    fingerprint = folder_fingerprint(listing.paths)
    shape, unreadable = settle_shape(listing, store, fingerprint, channels, decode_size, skip_bad_files)
    size = len(listing.samples) * math.prod(shape)
    budget = default_budget_bytes() if cache_max_gb is None else int(cache_max_gb * 2**30)
    labels = torch.tensor([label for _, label in listing.samples],
                          dtype=torch.long if target_kind == "classification" else torch.float32)
    if cache == "memory" or (cache == "auto" and size <= budget):
        decoded = store.decoded(listing.paths, fingerprint, shape, skip_bad_files)
        everything: Union[TensorSplit, FileSplit] = TensorSplit(decoded.pixels, labels[decoded.kept])
        unreadable = [BadImage(listing.paths[i], reason) for i, reason in decoded.bad.items()]
        where = f"in memory ({'reused' if decoded.reused else 'new'} decode cache {decoded.file or 'not written'})"
    else:
        left_out = {image.path for image in unreadable}
        readable = tuple(sample for sample in listing.samples if sample[0] not in left_out)
        everything = FileSplit(readable, shape, workers, skip_bad_files)
        reason = "dataset.cache=none" if cache == "none" else (
            f"{size / 2**30:.1f} GB decoded > the cache budget of {budget / 2**30:.1f} GB, dataset.cache_max_gb")
        where = f"streamed by {workers} DataLoader workers ({reason})"
    if unreadable:
        log.warning("dataset: left out %d of %d images that cannot be read (dataset.skip_bad_files=true), e.g. %s (%s)",
                    len(unreadable), len(listing.samples), unreadable[0].path, unreadable[0].reason)
    log.info("dataset: %d images (%s) under %s at %s, %s", len(everything), _described(listing),
             listing.folder, "x".join(map(str, shape)), where)
    train, test = split_off(everything, test_fraction, seed)
    return DataSplits(train=train, test=test, extras={"classes": list(listing.classes),
                                                      "target_names": list(listing.target_names)})


def folder_shape(root: str, labels_csv: Optional[str], channels: Union[str, int], resize: Optional[int],
                 skip_bad_files: bool = False) -> list[int]:
    """(C, H, W) the folder's images are decoded at: what `dataset.input_shape` resolves to."""
    listing = list_images(root, labels_csv, target_kind=None)  # the files only: their targets are not needed
    store = FolderCache(listing.folder, labels_csv, default_workers())
    fingerprint = folder_fingerprint(listing.paths) if channels == "auto" or resize is None else ""
    return list(settle_shape(listing, store, fingerprint, channels, resize, skip_bad_files)[0])


def settle_shape(listing: Listing, store: FolderCache, fingerprint: str, channels: Union[str, int],
                 resize: Optional[int], skip_bad_files: bool) -> tuple[tuple[int, int, int], list[BadImage]]:
    """The decode shape, and the files whose headers cannot be read (read only when the shape needs them).

    `channels=auto` is 1 when every image is grey, else 3; a null `resize` is the images' own
    size, which must then be the same for all of them.
    """
    if channels not in CHANNELS:
        raise ConfigError(f"dataset.channels={channels!r} is not one of: {', '.join(map(str, CHANNELS))}")
    if resize is not None and resize < 1:
        raise ConfigError(f"dataset.resize={resize} is out of range: must be >= 1 or null")
    if channels != "auto" and resize is not None:
        return (int(channels), resize, resize), []
    infos = store.headers(listing.paths, fingerprint)
    bad = [info for info in infos if isinstance(info, BadImage)]
    if bad and not skip_bad_files:
        raise bad_image_error(bad[0])
    good = [info for info in infos if isinstance(info, ImageInfo)]
    if not good:
        raise DataError(f"{listing.folder}: none of the {len(infos)} images can be read, "
                        f"e.g. {bad[0].path} ({bad[0].reason})")
    if channels == "auto":
        channels = 1 if all(info.grey for info in good) else 3
    if resize is not None:
        return (int(channels), resize, resize), bad
    sizes = sorted({(info.height, info.width) for info in good})
    if len(sizes) > 1:
        shown = ", ".join(f"{h}x{w}" for h, w in sizes[:3])
        raise DataError(f"{listing.folder}: the images differ in size ({shown}{', ...' if len(sizes) > 3 else ''}) "
                        "and the model sets no input size; set dataset.resize=<pixels>")
    return (int(channels), *sizes[0]), bad


def default_workers() -> int:
    """Decoding processes: this job's share of the cores (a parallel sweep splits them), at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, available_cores() // parallel_jobs()))


def _described(listing: Listing) -> str:
    """What the images' targets are, for the log: "3 classes", "17 labels", "target score"."""
    if listing.target_kind == "classification":
        return f"{len(listing.classes)} classes"
    if listing.target_kind == "binary":
        return f"yes/no: {listing.classes[-1]} is positive"
    if listing.target_kind == "multilabel":
        return f"{len(listing.classes)} labels"
    return f"target{'s' if len(listing.target_names) > 1 else ''} {', '.join(listing.target_names)}"

