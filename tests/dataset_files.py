"""Tiny dataset files in the layouts the real ones use, written into a test's temporary folder.

`DATASET_OVERRIDES(tmp_path)` gives, for every conf/dataset/*.yaml, the overrides that point
it at such files (download off) and a model that fits its task, so every option can run
without a network.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
REPETITIVE_TEXT = "the quick brown fox jumps over the lazy dog. " * 40


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX (LeCun's MNIST format): magic 0x08 (ubyte) + rank, big-endian sizes, then the bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(raw: Path, num_train: int = 60, num_test: int = 20, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-style files, gzipped, as torchvision's mirrors serve them."""
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (num_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(num_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (num_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(num_test) % 10}
    raw.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
    return arrays


def write_cifar10(root: Path, per_batch: int = 10, seed: int = 0) -> None:
    """cifar-10-batches-py/: five training batches and a test batch, python pickles of data/labels."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{n}" for n in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8),
                 "labels": [int(i % 10) for i in range(per_batch)]}
        (folder / name).write_bytes(pickle.dumps(batch))


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 8) -> None:
    """root/<class>/<n>.png, 12x12 colour images whose mean colour depends on the class."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            pixels = rng.integers(0, 100, (12, 12, 3)) + 150 * label
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{n}.png")


def write_leaves(root: Path, per_class: int = 6) -> None:
    """Kaggle's Classify Leaves layout: images/<n>.png and train.csv of image,label."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = ["image,label"]
    rng = np.random.default_rng(1)
    for n in range(3 * per_class):
        Image.fromarray(rng.integers(0, 256, (10, 14, 3)).astype(np.uint8)).save(root / "images" / f"{n}.png")
        rows.append(f"images/{n}.png,{('acer', 'betula', 'quercus')[n % 3]}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def write_house_csv(path: Path, rows: int = 40) -> None:
    """Id, a numeric column with gaps, a categorical column with gaps, a constant column, a complete
    categorical column (Quality, a classification target), SalePrice."""
    lines = ["Id,LotArea,Street,Zero,Quality,SalePrice"]
    for n in range(rows):
        area = "" if n % 7 == 3 else str(1000 + 37 * n)
        street = "NA" if n % 5 == 4 else ("Pave", "Grvl")[n % 2]
        quality = ("low", "mid", "high")[n % 3]
        lines.append(f"{n},{area},{street},0,{quality},{100000 + 2500 * n + 10000 * (n % 2)}")
    path.write_text("\n".join(lines) + "\n")


def write_text(path: Path, text: str = REPETITIVE_TEXT) -> None:
    path.write_text(text)


def shipped_english_text() -> str:
    """Real English prose that a dependency ships: scikit-learn's descriptions of its datasets.

    About 43,000 characters (33,000 letters and spaces after d2l's cleaning): enough for the
    time_machine recipes' 10,000 training and 2 x 5,000 held-out characters.
    """
    import sklearn

    folder = Path(sklearn.__file__).parent / "datasets" / "descr"
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.rst")))


def place_time_machine(root: Path) -> Path:
    """A stand-in for d2l's timemachine.txt where `dataset=time_machine` looks ($DLRUN_DATA=root)."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / "timemachine.txt"
    path.write_text(shipped_english_text(), encoding="utf-8")
    return path


def dataset_overrides(tmp_path: Path) -> dict[str, list[str]]:
    """Overrides per dataset option: its files written under `tmp_path`, download off, a fitting model."""
    root = tmp_path / "data"
    write_idx(root / "FashionMNIST" / "raw")
    write_idx(root / "MNIST" / "raw", seed=1)
    write_cifar10(root)
    write_image_folder(root / "pets")
    write_house_csv(root / "house.csv")
    write_text(root / "text.txt")
    write_text(root / "timemachine.txt")
    rnn = ["model=mlp", "model._target_=tiny_rnn.TinyRNN"]
    return {
        "digits": ["model=lenet"],
        "synthetic_linear": ["model=softmax"],
        "sine": ["model=mlp"],
        "diabetes": ["model=mlp"],
        "fashion_mnist": ["model=lenet", f"dataset.root={root}", "dataset.download=false"],
        "mnist": ["model=mlp", f"dataset.root={root}", "dataset.download=false"],
        "cifar10": ["model=lenet", f"dataset.root={root}", "dataset.download=false"],
        "image_folder": ["model=lenet", f"dataset.root={root / 'pets'}", "dataset.num_workers=0",
                         "dataset.image_size=16"],
        "csv": ["model=mlp", f"dataset.path={root / 'house.csv'}", "dataset.target=SalePrice", "dataset.drop=[Id]",
                "dataset.log_target=true"],
        "text": [*rnn, f"dataset.path={root / 'text.txt'}", "dataset.num_steps=8"],
        "time_machine": [*rnn, f"dataset.path={root / 'timemachine.txt'}", "dataset.download=false",
                         "dataset.num_steps=8", "dataset.max_tokens=null"],
    }
