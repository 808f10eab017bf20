"""Tiny dataset files in the layouts the real ones use, written into a test's temporary folder.

`DATASET_OVERRIDES(tmp_path)` gives, for every conf/dataset/*.yaml, the overrides that point
it at such files (download off) and a model that fits its task, so every option can run
without a network.
"""

from __future__ import annotations

import gzip
import json
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


def _picture_with_boxes(size: tuple[int, int], boxes: list[tuple[int, int, int, int]], seed: int) -> Image.Image:
    """A noisy width x height RGB image with a flat-coloured rectangle at each (x, y, w, h) pixel box."""
    rng = np.random.default_rng(seed)
    width, height = size
    pixels = rng.integers(0, 80, (height, width, 3))
    for n, (x, y, w, h) in enumerate(boxes):
        pixels[y:y + h, x:x + w] = (200, 60 + 60 * n, 40)
    return Image.fromarray(pixels.astype(np.uint8))


def write_coco_folder(root: Path, images: int = 3) -> Path:
    """root/images/<n>.jpg and root/annotations.json (COCO: bbox [x, y, w, h] in pixels), two categories
    with ids 3 and 7 (not 0..1, as in real files), images of different sizes; returns the JSON's path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    content: dict = {"images": [], "annotations": [],
                     "categories": [{"id": 7, "name": "bolt"}, {"id": 3, "name": "nut"}]}
    for n in range(images):
        size = (40 + 8 * n, 32)
        boxes = [(4, 4, 12, 10), (20 + 2 * n, 12, 10, 14)][: 1 + n % 2]
        _picture_with_boxes(size, boxes, seed=n).save(root / "images" / f"{n}.jpg")
        content["images"].append({"id": n + 1, "file_name": f"images/{n}.jpg", "width": size[0], "height": size[1]})
        for k, box in enumerate(boxes):
            content["annotations"].append({"id": 10 * n + k, "image_id": n + 1, "category_id": (3, 7)[k],
                                           "bbox": list(box), "area": box[2] * box[3], "iscrowd": 0})
    path = root / "annotations.json"
    path.write_text(json.dumps(content))
    return path


VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>{width}</width><height>{height}</height>
<depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{label}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>
<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"""


def write_voc(root: Path, year: str = "2012", lists: dict[str, int] | None = None) -> Path:
    """root/VOCdevkit/VOC<year>/: JPEGImages, Annotations (XML) and ImageSets/Main/<list>.txt as VOC has them."""
    folder = root / "VOCdevkit" / f"VOC{year}"
    for name in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (folder / name).mkdir(parents=True, exist_ok=True)
    lists = lists or ({"train": 6, "val": 3} if year == "2012" else {"trainval": 6, "test": 3})
    number = 0
    for image_set, count in lists.items():
        names = []
        for _ in range(count):
            name = f"{year}_{number:06d}"
            boxes = [(3, 5, 14, 12), (20, 8, 12, 16)][: 1 + number % 2]
            _picture_with_boxes((40, 32), boxes, seed=number).save(folder / "JPEGImages" / f"{name}.jpg")
            objects = "".join(VOC_OBJECT.format(label=("dog", "person")[k], x1=x, y1=y, x2=x + w, y2=y + h)
                              for k, (x, y, w, h) in enumerate(boxes))
            (folder / "Annotations" / f"{name}.xml").write_text(
                VOC_XML.format(name=name, width=40, height=32, objects=objects))
            names.append(name)
            number += 1
        (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(names) + "\n")
    return folder


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
    annotations = write_coco_folder(root / "coco")
    write_voc(root)
    rnn = ["model=mlp", "model._target_=tiny_rnn.TinyRNN"]
    # A TinySSD of three scales (from 16 px up) and narrow widths: a detection smoke run in seconds.
    ssd = ["model=tiny_ssd", "model.sizes=[[0.3,0.45],[0.6,0.75],[0.9,0.95]]", "model.base_channels=[4,8,8]",
           "model.channels=8"]
    return {
        "digits": ["model=lenet"],
        "synthetic_linear": ["model=softmax"],
        "sine": ["model=mlp"],
        "diabetes": ["model=mlp"],
        "breast_cancer": ["model=mlp"],
        "fashion_mnist": ["model=lenet", f"dataset.root={root}", "dataset.download=false"],
        "mnist": ["model=mlp", f"dataset.root={root}", "dataset.download=false"],
        "cifar10": ["model=lenet", f"dataset.root={root}", "dataset.download=false"],
        "image_folder": ["model=lenet", f"dataset.root={root / 'pets'}", "dataset.num_workers=0"],
        "csv": ["model=mlp", f"dataset.path={root / 'house.csv'}", "dataset.target=SalePrice", "dataset.drop=[Id]",
                "dataset.log_target=true"],
        "text": [*rnn, f"dataset.path={root / 'text.txt'}", "dataset.num_steps=8"],
        "time_machine": [*rnn, f"dataset.path={root / 'timemachine.txt'}", "dataset.download=false",
                         "dataset.num_steps=8", "dataset.max_tokens=null"],
        "synthetic_detection": [*ssd, "dataset.image_size=32", "dataset.num_train=40", "dataset.num_test=8"],
        "coco_folder": [*ssd, f"dataset.root={root / 'coco'}", f"dataset.annotations={annotations}",
                        "dataset.image_size=32", "dataset.num_workers=0", "dataset.test_fraction=0.34",
                        "dataset.val_fraction=0.5"],
        "voc": [*ssd, f"dataset.root={root}", "dataset.download=false", "dataset.image_size=32",
                "dataset.num_workers=0"],
    }
