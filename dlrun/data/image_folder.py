"""Images in folders: `<root>/<class>/<image>`, or a CSV of image,label (Kaggle's Classify Leaves).

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

import csv
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from dlrun.data.decode_cache import FolderCache, default_budget_bytes, folder_fingerprint
from dlrun.data.files import FileSplit
from dlrun.data.images import IMAGE_EXTENSIONS, BadImage, ImageInfo, bad_image_error, is_image_file
from dlrun.data.splits import DataSplits, TensorSplit, split_off
from dlrun.errors import ConfigError, DataError
from dlrun.machine import available_cores, parallel_jobs

log = logging.getLogger("dlrun")
CACHE_MODES = ("auto", "memory", "none")
CHANNELS = ("auto", 1, 3)
MAX_WORKERS = 16  # each worker is a process holding its own torch; more rarely decode faster


@dataclass(frozen=True)
class Listing:
    """The labelled images of a folder, in a fixed order: by class folder, then by path (or as the CSV lists them)."""

    folder: Path
    samples: tuple[tuple[str, int], ...]
    classes: tuple[str, ...]

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.samples]


def load_image_folder(root: str, labels_csv: Optional[str] = None, channels: Union[str, int] = "auto",
                      decode_size: Optional[int] = None, cache: str = "auto", cache_max_gb: Optional[float] = None,
                      skip_bad_files: bool = False, test_fraction: float = 0.2, seed: int = 0,
                      num_workers: Optional[int] = None) -> DataSplits:
    """The labelled images under `root`, a test split of `test_fraction` drawn by seed (`split_off`).

    Without `labels_csv`: one sub-folder per class. With it: a CSV (relative to `root`) whose
    first two columns are an image path relative to `root` and its label. Images are decoded
    at `decode_size` square (None: their own size, which must then be the same for all).
    `extras["classes"]` lists the class names in index order.
    """
    if cache not in CACHE_MODES:
        raise ConfigError(f"dataset.cache={cache!r} is not one of: {', '.join(CACHE_MODES)}")
    if cache_max_gb is not None and not cache_max_gb > 0:
        raise ConfigError(f"dataset.cache_max_gb={cache_max_gb} is out of range: "
                          "must be > 0 or null (a quarter of the RAM)")
    if num_workers is not None and not (isinstance(num_workers, int) and num_workers >= 0):
        raise ConfigError(f"dataset.num_workers={num_workers} is out of range: must be >= 0 or null (from the cores)")
    listing = list_images(root, labels_csv)
    workers = default_workers() if num_workers is None else num_workers
    store = FolderCache(listing.folder, labels_csv, workers)
    fingerprint = folder_fingerprint(listing.paths)
    shape, unreadable = settle_shape(listing, store, fingerprint, channels, decode_size, skip_bad_files)
    size = len(listing.samples) * math.prod(shape)
    budget = default_budget_bytes() if cache_max_gb is None else int(cache_max_gb * 2**30)
    labels = torch.tensor([label for _, label in listing.samples], dtype=torch.long)
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
    log.info("dataset: %d images in %d classes under %s at %s, %s", len(everything), len(listing.classes),
             listing.folder, "x".join(map(str, shape)), where)
    train, test = split_off(everything, test_fraction, seed)
    return DataSplits(train=train, test=test, extras={"classes": list(listing.classes)})


def folder_shape(root: str, labels_csv: Optional[str], channels: Union[str, int], resize: Optional[int],
                 skip_bad_files: bool = False) -> list[int]:
    """(C, H, W) the folder's images are decoded at: what `dataset.input_shape` resolves to."""
    listing = list_images(root, labels_csv)
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


def list_images(root: str, labels_csv: Optional[str] = None) -> Listing:
    """The folder's labelled images; an empty class folder or a CSV naming missing files is an error."""
    folder = _image_root(root)
    if labels_csv:
        samples, classes = _from_csv(folder, labels_csv)
    else:
        samples, classes = _from_class_folders(folder)
    if len(classes) < 2 or len(samples) < 2:
        raise DataError(f"{folder}: found {len(samples)} images in {len(classes)} classes; need at least 2 of each")
    return Listing(folder, tuple(samples), tuple(classes))


def find_classes(root: str, labels_csv: Optional[str] = None) -> list[str]:
    """Class names in index order: the sub-folders of `root`, or the distinct labels of its CSV."""
    folder = _image_root(root)
    return _from_csv(folder, labels_csv)[1] if labels_csv else _class_names(folder)


def _image_root(root: str) -> Path:
    folder = Path(os.path.abspath(Path(root).expanduser()))  # absolute: file paths identify the images in the cache
    if not folder.is_dir():
        raise DataError(f"dataset.root: image folder {folder} not found; expected {folder}/<class>/<image> "
                        "or a CSV of image,label there (dataset.labels_csv)")
    return folder


def _class_names(folder: Path) -> list[str]:
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise DataError(f"{folder}: no class folders; expected {folder}/<class>/<image>.png|jpg "
                        "or a CSV of image,label there (dataset.labels_csv)")
    return names


def _from_class_folders(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    classes = _class_names(folder)
    samples, empty = [], []
    root = os.path.realpath(folder)
    seen: dict[str, str] = {root: str(folder)}  # shared: no image under two classes
    for label, name in enumerate(classes):
        files = images_under(folder / name, seen, within=(root,))
        if not files:
            empty.append(name)
        samples.extend((path, label) for path in files)
    if empty:
        raise DataError(f"{folder}: class folder{'s' if len(empty) > 1 else ''} {', '.join(empty)} "
                        f"{'hold' if len(empty) > 1 else 'holds'} no images ({', '.join(IMAGE_EXTENSIONS)}); "
                        "add images or remove the folder")
    return samples, classes


def images_under(folder: Path, seen: Optional[dict[str, str]] = None, within: tuple[str, ...] = ()) -> list[str]:
    """Image files under `folder` and its sub-folders (hidden ones skipped), following links; in walk order:
    a folder's files sorted, then its sub-folders' by name.

    `seen` (real path → the path it was found at) is shared between the calls for one listing, so an
    image or a folder reached twice (through a symbolic link) is a DataError naming both paths, and a
    link back to a folder it lies in (a loop, `within` giving the real paths of the folders above
    `folder`) one naming the link: never the same file under two labels.
    """
    seen = {} if seen is None else seen
    found: list[str] = []
    root = os.path.realpath(folder)
    _claim(seen, root, str(folder))
    _walk(str(folder), root, (*within, root), seen, found)
    return found


def _walk(directory: str, real: str, ancestors: tuple[str, ...], seen: dict[str, str], found: list[str]) -> None:
    entries = sorted((entry for entry in os.scandir(directory) if not entry.name.startswith(".")),
                     key=lambda entry: entry.name)
    subfolders = []
    for entry in entries:
        linked = entry.is_symlink()
        if entry.is_dir():
            subfolders.append((entry, os.path.realpath(entry.path) if linked else os.path.join(real, entry.name)))
        elif is_image_file(entry.name):
            _claim(seen, os.path.realpath(entry.path) if linked else os.path.join(real, entry.name), entry.path)
            found.append(entry.path)
    for entry, target in subfolders:
        if target in ancestors:
            raise DataError(f"{entry.path} is a symbolic link to {target}, a folder it lies in (a loop); "
                            "remove the link or point it elsewhere")
        _claim(seen, target, entry.path)
        _walk(entry.path, target, (*ancestors, target), seen, found)


def _claim(seen: dict[str, str], real: str, path: str) -> None:
    """Note that `path` is the file or folder at `real`; DataError if another path reached it first."""
    if real in seen:
        raise DataError(f"{path} and {seen[real]} are the same {'folder' if os.path.isdir(real) else 'file'} "
                        f"({real}, reached twice through a symbolic link); an image must be listed once")
    seen[real] = path


def _from_csv(folder: Path, labels_csv: str) -> tuple[list[tuple[str, int]], list[str]]:
    table = folder / labels_csv
    if not table.is_file():
        raise DataError(f"dataset.labels_csv: {table} not found; expected a CSV of image path,label under {folder}")
    with open(table, newline="") as handle:
        rows = [row for row in csv.reader(handle) if row][1:]  # the first row is the header
    if any(len(row) < 2 for row in rows):
        raise DataError(f"{table}: every row needs an image path and a label")
    missing = [row[0] for row in rows if not (folder / row[0]).is_file()]
    if missing:
        raise DataError(f"{table} lists {len(missing)} images not found under {folder}, e.g. {missing[0]}")
    classes = sorted({row[1] for row in rows})
    index = {name: i for i, name in enumerate(classes)}
    return [(str(folder / row[0]), index[row[1]]) for row in rows], classes

