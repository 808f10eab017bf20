"""Fashion-MNIST, MNIST and CIFAR-10 through torchvision, held in memory as uint8 tensors.

torchvision's own classes download and verify the files and define where they go; the pixels
are then kept as one uint8 tensor per split (a quarter of float32's memory) and turned into
floats in [0, 1] batch-wise on the training device (see `dlrun.data.build_data`).
"""

from __future__ import annotations

import gzip
import pickle
import shutil
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from dlrun.data.splits import DataSplits, TensorSplit
from dlrun.data.storage import describe_missing, files_error, missing_files

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = tuple(f"data_batch_{n}" for n in range(1, 6)) + ("test_batch",)
# Class names in label order, as d2l writes them (folder-safe, so an image folder's classes can match them).
CLASS_NAMES = {
    "FashionMNIST": ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                     "ankle boot"),
    "MNIST": tuple(str(digit) for digit in range(10)),
    "CIFAR-10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def load_fashion_mnist(root: str, download: bool = True) -> DataSplits:
    """Fashion-MNIST: 60,000 + 10,000 28x28 grey images of 10 clothing classes (stored under root/FashionMNIST/raw)."""
    return _load_idx(datasets.FashionMNIST, root, download)


def load_mnist(root: str, download: bool = True) -> DataSplits:
    """MNIST: 60,000 + 10,000 28x28 grey handwritten digits (stored under root/MNIST/raw)."""
    return _load_idx(datasets.MNIST, root, download)


def load_cifar10(root: str, download: bool = True) -> DataSplits:
    """CIFAR-10: 50,000 + 10,000 32x32 colour images of 10 classes (root/cifar-10-batches-py, python pickles)."""
    folder = Path(root).expanduser() / CIFAR10_FOLDER
    if missing_files(folder, CIFAR10_FILES) and download:
        torchvision_download("CIFAR-10", datasets.CIFAR10, folder, CIFAR10_FILES, root=str(folder.parent), train=True)
    missing = missing_files(folder, CIFAR10_FILES)
    if missing:
        raise files_error("CIFAR-10", folder, CIFAR10_FILES, describe_missing(missing, CIFAR10_FILES),
                          datasets.CIFAR10.url)
    train = [_read_cifar_batch(folder, name) for name in CIFAR10_FILES[:-1]]
    return DataSplits(train=TensorSplit(torch.cat([s.inputs for s in train]), torch.cat([s.targets for s in train])),
                      test=_read_cifar_batch(folder, CIFAR10_FILES[-1]),
                      extras={"classes": list(CLASS_NAMES["CIFAR-10"])})


def _load_idx(kind: type[datasets.MNIST], root: str, download: bool) -> DataSplits:
    name = kind.__name__
    root_path = Path(root).expanduser()
    raw = root_path / name / "raw"
    _extract_placed_archives(name, raw)
    if missing_files(raw, IDX_FILES) and download:
        torchvision_download(name, kind, raw, IDX_FILES, root=str(root_path))  # fetches both splits
    missing = missing_files(raw, IDX_FILES)
    if missing:
        raise files_error(name, raw, [f + ".gz" for f in IDX_FILES], describe_missing(missing, IDX_FILES),
                          kind.mirrors[0])
    splits = {}
    for train in (True, False):
        try:
            data = kind(str(root_path), train=train, download=False)
        except Exception as error:  # torchvision reports truncation as AssertionError/RuntimeError/ValueError
            raise files_error(name, raw, IDX_FILES, f"cannot read the {'training' if train else 'test'} files "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'malformed'})"
                              ) from None
        if data.data.dim() != 3 or len(data.data) != len(data.targets):
            raise files_error(name, raw, IDX_FILES, f"{len(data.data)} images but {len(data.targets)} labels")
        splits[train] = TensorSplit(data.data.unsqueeze(1).contiguous(), data.targets.long())
    return DataSplits(train=splits[True], test=splits[False], extras={"classes": list(CLASS_NAMES[name])})


def _extract_placed_archives(name: str, raw: Path) -> None:
    """Unpack `<file>.gz` placed by hand next to where torchvision expects `<file>`."""
    for file in missing_files(raw, IDX_FILES):
        archive = raw / f"{file}.gz"
        if not archive.is_file():
            continue
        try:
            with gzip.open(archive) as source, open(raw / file, "wb") as target:
                shutil.copyfileobj(source, target)
        except (OSError, EOFError) as error:
            (raw / file).unlink(missing_ok=True)
            raise files_error(name, raw, [f + ".gz" for f in IDX_FILES],
                              f"{archive.name} is not a complete gzip file ({error})") from None


def torchvision_download(name: str, kind: type, folder: Path, files: tuple[str, ...], source: str = "",
                         **arguments: object) -> None:
    """Let torchvision fetch and verify the files; any failure becomes the one-line files error.

    `source` (where to download by hand) defaults to the dataset class's `url`.
    """
    try:
        kind(download=True, **arguments)
    except Exception as error:  # no network, a proxy, a mirror down: all end in the same advice
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise files_error(name, folder, files, f"download failed ({reason})",
                          source or getattr(kind, "url", "")) from None


def _read_cifar_batch(folder: Path, name: str) -> TensorSplit:
    try:
        with open(folder / name, "rb") as handle:
            batch = pickle.load(handle, encoding="latin1")
        images = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch["labels"], dtype=np.int64)
    except Exception as error:  # truncated or not a CIFAR batch: unpickling fails in many ways
        raise files_error("CIFAR-10", folder, CIFAR10_FILES, f"cannot read {name} ({type(error).__name__})") from None
    if len(images) != len(labels):
        raise files_error("CIFAR-10", folder, CIFAR10_FILES, f"{name} has {len(images)} images but {len(labels)} labels")
    return TensorSplit(torch.from_numpy(images), torch.from_numpy(labels))
