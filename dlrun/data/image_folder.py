"""Images in folders: torchvision's ImageFolder layout, or a CSV of file,label (Kaggle's Classify Leaves).

File-backed (decoded by DataLoader workers, see `dlrun.data.files`), with the usual ImageNet-style
transforms: random resized crop, flip and colour jitter for training; resize and centre crop to
evaluate; both normalized with ImageNet's channel statistics.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

import torch
from torchvision import datasets, transforms

from dlrun.data.files import FileSplit
from dlrun.data.splits import DataSplits
from dlrun.errors import DataError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_image_folder(root: str, labels_csv: Optional[str] = None, image_size: int = 224,
                      test_fraction: float = 0.2, seed: int = 0, num_workers: int = 4) -> DataSplits:
    """Labelled images under `root`, a test split of `test_fraction` drawn by seed.

    Without `labels_csv`: one sub-folder per class (`root/<class>/<image>`). With it: a CSV
    (relative to `root`) whose first two columns are an image path relative to `root` and its
    label, e.g. Classify Leaves' `train.csv` (image,label → images/0.jpg,...). `extras["classes"]`
    lists the class names in index order.
    """
    folder = _image_root(root)
    samples, classes = _from_csv(folder, labels_csv) if labels_csv else _from_class_folders(folder)
    if len(classes) < 2 or len(samples) < 2:
        raise DataError(f"{folder}: found {len(samples)} images in {len(classes)} classes; need at least 2 of each")
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    test_size = max(1, int(round(len(samples) * test_fraction)))
    everything = FileSplit(tuple(samples[i] for i in order), _train_transform(image_size),
                           _eval_transform(image_size), num_workers)
    return DataSplits(train=everything.select(slice(test_size, None)), test=everything.select(slice(0, test_size)),
                      extras={"classes": classes})


def find_classes(root: str, labels_csv: Optional[str] = None) -> list[str]:
    """Class names in index order: the sub-folders of `root`, or the distinct labels of its CSV."""
    folder = _image_root(root)
    if labels_csv:
        return _from_csv(folder, labels_csv)[1]
    try:
        return datasets.folder.find_classes(str(folder))[0]
    except FileNotFoundError as error:
        raise DataError(f"{folder}: {error}; expected {folder}/<class>/<image>.png|jpg") from None


def _image_root(root: str) -> Path:
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.root: image folder {folder} not found; expected {folder}/<class>/<image> "
                        "or a CSV of image,label there (dataset.labels_csv)")
    return folder


def _from_class_folders(folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    try:
        found = datasets.ImageFolder(str(folder))
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"{folder}: {error}; expected {folder}/<class>/<image>.png|jpg") from None
    return [(path, label) for path, label in found.samples], list(found.classes)


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


def _train_transform(size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)),
        transforms.RandomHorizontalFlip(),
        transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _eval_transform(size: int) -> transforms.Compose:
    return transforms.Compose([
        transforms.Resize(round(size * 256 / 224)),
        transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])
