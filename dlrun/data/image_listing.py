"""Which images a folder holds and their targets: class sub-folders, or a labels CSV of image,target(s).

`list_images` gives a `Listing`: the labelled images in a fixed order (by class folder, then by path,
or as the CSV lists them). Symbolic links are followed, but a link back into a folder it lies in (a
loop) or a second path to a file or folder already listed is an error naming both, never a silent
repeat; hidden files and files without an image extension are skipped.
dlrun.data.image_folder decodes what is listed.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

from dlrun.data.csv_checks import header_names
from dlrun.data.images import IMAGE_EXTENSIONS, is_image_file
from dlrun.data.targets import EncodedTargets, encode_targets
from dlrun.errors import DataError


@dataclass(frozen=True)
class Listing:
    """The labelled images of a folder, in a fixed order: by class folder, then by path (or as the CSV lists them).

    A sample's target is a class index (classification), 0.0 or 1.0 (binary), a tuple of 0/1 (multilabel)
    or a number or tuple of numbers (regression).
    """

    folder: Path
    samples: tuple[tuple[str, Any], ...]
    classes: tuple[str, ...]
    target_names: tuple[str, ...] = ()  # the labels CSV's target columns
    target_kind: str = "classification"

    @property
    def paths(self) -> list[str]:
        return [path for path, _ in self.samples]


def list_images(root: str, labels_csv: Optional[str] = None, target_kind: Optional[str] = "classification",
                target: Union[str, Sequence[str], None] = None, classes: Optional[Sequence[str]] = None) -> Listing:
    """The folder's labelled images; an empty class folder or a CSV naming missing files is an error.

    `target_kind` None lists the files alone (targets 0, not read): what the input shape needs.
    """
    folder = _image_root(root)
    if labels_csv:
        samples, targets = _from_csv(folder, labels_csv, target_kind, target, classes)
        found, names = targets.classes, targets.names
    elif target_kind is None:
        samples, found, names = *_from_class_folders(folder), ()
    else:
        _check_folder_kind(folder, target_kind)
        samples, found, names = *_from_class_folders(folder), ()
        if classes is not None:  # index by the model's classes (dlrun-eval)
            samples, found = _indexed_by(samples, found, list(classes), folder)
        if target_kind == "binary":  # 0.0 and 1.0: the second folder in name order is the positive class
            samples = [(path, float(label)) for path, label in samples]
    if len(samples) < 2 or (target_kind == "classification" and len(found) < 2):
        raise DataError(f"{folder}: found {len(samples)} images in {len(found)} classes; need at least 2 of each")
    return Listing(folder, tuple(samples), tuple(found), tuple(names), target_kind or "classification")


def _indexed_by(samples: list[tuple[str, int]], found: list[str], classes: list[str],
                folder: Path) -> tuple[list[tuple[str, int]], list[str]]:
    unknown = [name for name in found if name not in classes]
    if unknown:
        more = " ..." if len(classes) > 30 else ""
        raise DataError(f"the data's classes {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} are not "
                        f"classes of the model; its classes: {', '.join(classes[:30])}{more}")
    index = {name: i for i, name in enumerate(classes)}
    return [(path, index[found[label]]) for path, label in samples], classes


def find_classes(root: str, labels_csv: Optional[str] = None) -> list[str]:
    """Class names in index order: the sub-folders of `root`, or the distinct labels of its CSV."""
    return list(find_targets(root, labels_csv)[0])


def find_targets(root: str, labels_csv: Optional[str] = None, target_kind: str = "classification",
                 target: Union[str, Sequence[str], None] = None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(class or label names, target columns) of the folder for `target_kind`, read without decoding an image."""
    folder = _image_root(root)
    if labels_csv:
        targets = _from_csv(folder, labels_csv, target_kind, target)[1]
        return targets.classes, targets.names
    _check_folder_kind(folder, target_kind)
    return tuple(_class_names(folder)), ()


def _check_folder_kind(folder: Path, target_kind: str) -> None:
    """Class folders carry classification, or binary with exactly two of them."""
    if target_kind not in ("classification", "binary"):
        raise DataError(f"dataset.task={target_kind} needs targets in a CSV: set dataset.labels_csv (image path, "
                        f"then the target column(s)); class folders under {folder} carry classification or binary")
    if target_kind == "binary" and len(names := _class_names(folder)) != 2:
        raise DataError(f"dataset.task=binary needs two class folders under {folder}, found {len(names)} "
                        f"({', '.join(names[:6])}); use dataset.task=classification")


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


def _from_csv(folder: Path, labels_csv: str, target_kind: Optional[str] = "classification",
              target: Union[str, Sequence[str], None] = None,
              classes: Optional[Sequence[str]] = None) -> tuple[list[tuple[str, Any]], EncodedTargets]:
    table = folder / labels_csv
    if not table.is_file():
        raise DataError(f"dataset.labels_csv: {table} not found; expected a CSV of image path,label under {folder}")
    with open(table, newline="", encoding="utf-8-sig") as handle:  # utf-8-sig: a byte-order mark is not a name
        lines = [row for row in csv.reader(handle) if row]
    header, rows = (header_names(table, lines[0]), lines[1:]) if lines else ([], [])
    if any(len(row) < 2 for row in rows):
        raise DataError(f"{table}: every row needs an image path and a label")
    missing = [row[0] for row in rows if not (folder / row[0]).is_file()]
    if missing:
        raise DataError(f"{table} lists {len(missing)} images not found under {folder}, e.g. {missing[0]}")
    if target_kind is None:
        return [(str(folder / row[0]), 0) for row in rows], EncodedTargets(np.zeros(len(rows)), (), ())
    targets = csv_targets(table, header, rows, target_kind, target, classes)
    values = [tuple(value) if isinstance(value, list) else value for value in targets.values.tolist()]
    return [(str(folder / row[0]), value) for row, value in zip(rows, values)], targets


def csv_targets(table: Path, header: list[str], rows: list[list[str]], target_kind: str,
                target: Union[str, Sequence[str], None] = None,
                classes: Optional[Sequence[str]] = None) -> EncodedTargets:
    """The targets of a labels CSV's rows: the `target` column(s), by default the one after the image path."""
    names = [header[1]] if target is None else [target] if isinstance(target, str) else [str(t) for t in target]
    absent = [name for name in names if name not in header]
    if absent:
        raise DataError(f"dataset.target={absent[0]!r} is not a column of {table}; columns: {', '.join(header)}")
    positions = {name: header.index(name) for name in names}
    columns = {name: [row[at].strip() if at < len(row) else "" for row in rows] for name, at in positions.items()}
    # Only an empty cell is missing: "none" or "NA" may well be a class here (a CSV table's words for a
    # missing number do not apply to labels)
    return encode_targets(target_kind, {name: [value or None for value in values] for name, values in columns.items()},
                          str(table), classes)
