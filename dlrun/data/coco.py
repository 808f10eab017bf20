"""Your own detection data: a folder of images and a COCO-format JSON, read through torchvision's CocoDetection.

File-backed: DataLoader workers decode each image to uint8 and resize it to `image_size` x
`image_size` (dlrun.data.images.decode; as SSD does, without keeping the aspect); boxes are
fractions of the image, so the resize does not move them. Training augmentation
(`regularization.augment`) follows on the device.
"""

from __future__ import annotations

import contextlib
import io
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.datasets import CocoDetection
from torchvision.ops import box_convert

from dlrun.data.files import FileSplit
from dlrun.data.splits import DataSplits
from dlrun.detection.targets import pad_target
from dlrun.errors import DataError


def load_coco_folder(root: str, annotations: str, image_size: int = 256, test_fraction: float = 0.2, seed: int = 0,
                     num_workers: int = 4) -> DataSplits:
    """Images under `root` with the objects listed in the COCO JSON `annotations`; a test split of
    `test_fraction` drawn by seed. Classes are the JSON's categories in id order
    (`extras["classes"]`); crowd annotations and boxes of no area are left out."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise DataError(f"dataset.root: image folder {folder} not found; expected the images that "
                        f"dataset.annotations ({annotations}) lists")
    classes = coco_categories(annotations)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco = CocoDetection(str(folder), str(Path(annotations).expanduser())).coco
    index = {category["id"]: position for position, category in enumerate(_sorted_categories(annotations))}
    objects: list[tuple[str, torch.Tensor, torch.Tensor]] = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        path = folder / info["file_name"]
        if not path.is_file():
            raise DataError(f"{annotations} lists images not found under {folder}, e.g. {info['file_name']}")
        records = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not a.get("iscrowd", 0)]
        boxes, labels = _boxes(records, index, path, info)
        objects.append((str(path), boxes, labels))
    if len(objects) < 2:
        raise DataError(f"{annotations}: found {len(objects)} images; need at least 2 (a training and a test image)")
    max_objects = max(1, max(len(labels) for _, _, labels in objects))
    samples = tuple((path, pad_target(boxes, labels, max_objects)) for path, boxes, labels in objects)
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    test_size = max(1, int(round(len(samples) * test_fraction)))
    everything = FileSplit(tuple(samples[i] for i in order), (3, image_size, image_size), num_workers)
    return DataSplits(train=everything.select(slice(test_size, None)), test=everything.select(slice(0, test_size)),
                      extras={"classes": classes})


def coco_categories(annotations: str) -> list[str]:
    """The category names of a COCO JSON in id order: the classes, index 0 first."""
    return [category["name"] for category in _sorted_categories(annotations)]


def _sorted_categories(annotations: str) -> list[dict[str, Any]]:
    return list(_read_categories(str(Path(annotations).expanduser().resolve())))


@lru_cache(maxsize=8)
def _read_categories(path: str) -> tuple[dict[str, Any], ...]:
    """Categories of the JSON at `path`, sorted by id (read once: the config's class count asks too)."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"dataset.annotations: {file} not found; expected a COCO JSON with images, annotations "
                        "and categories")
    try:
        content = json.loads(file.read_text())
        categories = sorted(({"id": int(c["id"]), "name": str(c["name"])} for c in content["categories"]),
                            key=lambda c: c["id"])
        if not isinstance(content["images"], list) or not isinstance(content["annotations"], list):
            raise TypeError("images and annotations must be lists")
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{file} is not a COCO annotation file ({type(error).__name__}: {error}); it needs "
                        "images, annotations and categories with id and name") from None
    if not categories:
        raise DataError(f"{file}: no categories; a COCO JSON lists its classes under categories (id, name)")
    return tuple(categories)


def _boxes(records: list[dict[str, Any]], index: dict[int, int], path: Path,
           info: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """The records' [x, y, width, height] pixel boxes as corners in fractions of the image, and their classes."""
    if not records:
        return torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    width, height = info.get("width"), info.get("height")
    if not width or not height:  # optional in hand-made files: read the image's header
        with Image.open(path) as image:
            width, height = image.size
    unknown = {r["category_id"] for r in records} - set(index)
    if unknown:
        raise DataError(f"{path.name}: annotations name category ids {sorted(unknown)} that categories does not list")
    try:
        pixels = torch.tensor([[float(v) for v in r["bbox"]] for r in records]).reshape(-1, 4)
    except (KeyError, ValueError, TypeError, RuntimeError):
        raise DataError(f"{path.name}: an annotation has no bbox [x, y, width, height] of four numbers") from None
    boxes = (box_convert(pixels, "xywh", "xyxy") / torch.tensor([width, height, width, height])).clamp(0, 1)
    labels = torch.tensor([index[r["category_id"]] for r in records])
    proper = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[proper], labels[proper]
