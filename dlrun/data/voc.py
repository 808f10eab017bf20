"""Pascal VOC detection through torchvision's VOCDetection: 20 object classes, downloaded on first use.

VOC2012 trains on its `train` list and tests on `val` (its test annotations are not public);
VOC2007 trains on `trainval` and tests on `test`. Images are file-backed, decoded by DataLoader
workers at `image_size` x `image_size` (dlrun.data.images.decode), boxes in fractions of the image.
"""

from __future__ import annotations

from pathlib import Path
from xml.etree.ElementTree import ParseError
from xml.etree.ElementTree import parse as parse_xml

import torch
from torchvision.datasets import VOCDetection
from torchvision.datasets.voc import DATASET_YEAR_DICT

from dlrun.data.files import FileSplit
from dlrun.data.splits import DataSplits
from dlrun.data.storage import describe_missing, files_error, missing_files
from dlrun.data.vision import torchvision_download
from dlrun.detection.targets import pad_target

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
SPLITS = {"2007": ("trainval", "test"), "2012": ("train", "val")}  # (training list, test list) per year


def load_voc(root: str, year: int = 2012, download: bool = True, image_size: int = 256,
             num_workers: int = 4) -> DataSplits:
    """VOC<year> under root/VOCdevkit/VOC<year> (JPEGImages/, Annotations/, ImageSets/Main/<list>.txt)."""
    year_name = str(year)
    if year_name not in SPLITS:
        raise ValueError(f"year {year} is not one of: {', '.join(SPLITS)}")
    root_path = Path(root).expanduser()
    splits = {}
    for role, image_set in zip(("train", "test"), SPLITS[year_name]):
        key = "2007-test" if image_set == "test" else year_name
        folder = root_path / DATASET_YEAR_DICT[key]["base_dir"]
        expected = ("Annotations/", "JPEGImages/", f"ImageSets/Main/{image_set}.txt")
        if _missing(folder, image_set) and download:
            torchvision_download(f"VOC{year}", VOCDetection, folder, expected, DATASET_YEAR_DICT[key]["url"],
                                 root=str(root_path), year=year_name, image_set=image_set)
        missing = _missing(folder, image_set)
        if missing:
            raise files_error(f"VOC{year}", folder, expected, describe_missing(missing, expected),
                              DATASET_YEAR_DICT[key]["url"])
        listed = VOCDetection(str(root_path), year=year_name, image_set=image_set, download=False)
        splits[role] = _read(f"VOC{year}", folder, expected, listed.images, listed.annotations)
    max_objects = max(1, *(len(labels) for split in splits.values() for _, _, labels in split))

    def file_split(objects: list[tuple[str, torch.Tensor, torch.Tensor]]) -> FileSplit:
        samples = tuple((path, pad_target(boxes, labels, max_objects)) for path, boxes, labels in objects)
        return FileSplit(samples, (3, image_size, image_size), num_workers)

    return DataSplits(train=file_split(splits["train"]), test=file_split(splits["test"]),
                      extras={"classes": list(VOC_CLASSES)})


def _missing(folder: Path, image_set: str) -> list[str]:
    """The expected folders and list file that are not there."""
    missing = [name + "/" for name in ("Annotations", "JPEGImages") if not (folder / name).is_dir()]
    return missing + [f"ImageSets/Main/{name}" for name in missing_files(folder / "ImageSets" / "Main",
                                                                         [f"{image_set}.txt"])]


def _read(name: str, folder: Path, expected: tuple[str, ...], images: list[str],
          annotations: list[str]) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """(image path, boxes (n, 4) in fractions of the image, classes (n,)) for every listed image."""
    index = {label: position for position, label in enumerate(VOC_CLASSES)}
    objects = []
    for image, annotation in zip(images, annotations):
        if not Path(image).is_file() or not Path(annotation).is_file():
            absent = image if not Path(image).is_file() else annotation
            raise files_error(name, folder, expected, f"{Path(absent).relative_to(folder)} is listed but missing")
        try:
            tree = VOCDetection.parse_voc_xml(parse_xml(annotation).getroot())["annotation"]
            width, height = float(tree["size"]["width"]), float(tree["size"]["height"])
            found = [o for o in tree.get("object", []) if o]
            boxes = torch.tensor([[float(o["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for o in found])
            labels = torch.tensor([index[o["name"]] for o in found], dtype=torch.long)
        except (ParseError, KeyError, ValueError, TypeError) as error:
            raise files_error(name, folder, expected, f"cannot read {Path(annotation).name} "
                              f"({type(error).__name__}: {error})") from None
        boxes = (boxes.reshape(-1, 4) / torch.tensor([width, height, width, height])).clamp(0, 1)
        objects.append((image, boxes, labels))
    return objects
