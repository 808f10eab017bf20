"""A CSV file as a tabular dataset, preprocessed as d2l does for Kaggle's house prices.

Numeric columns are standardized (mean 0, std 1) and their missing values filled with 0 (the
mean); other columns are one-hot encoded, with an extra indicator column where values are
missing. The statistics and categories come from the whole file (features only, never the
target), as in d2l, so the feature count is known from the file alone — which is how
`${dlrun.csv_num_features:...}` gives models their input shape before any loading.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlrun.data.splits import DataSplits, TensorSplit, split_off
from dlrun.errors import DataError

MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}
TARGET_KINDS = ("regression", "classification")


@dataclass(frozen=True)
class EncodedTable:
    features: np.ndarray  # float32 (rows, encoded features)
    feature_names: tuple[str, ...]
    targets: np.ndarray  # float32 values (regression) or int64 class indices (classification)
    classes: tuple[str, ...]  # class names in index order; empty for regression


def load_csv(path: str, target: str, target_kind: str = "regression", drop: list[str] | None = None,
             test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """Rows of `path` as (encoded features, `target`), a test split of `test_fraction` drawn by seed."""
    table = encode_csv(path, target, target_kind, tuple(drop or ()))
    dtype = torch.long if target_kind == "classification" else torch.float32
    rows = TensorSplit(torch.from_numpy(table.features), torch.from_numpy(table.targets).to(dtype))
    train, test = split_off(rows, test_fraction, seed)
    return DataSplits(train=train, test=test,
                      extras={"feature_names": list(table.feature_names), "classes": list(table.classes)})


def encode_csv(path: str, target: str, target_kind: str, drop: tuple[str, ...] = ()) -> EncodedTable:
    """Read and encode `path`; cached per file version, as the config resolvers ask too."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path: CSV file {file} not found; set dataset.path to a CSV file with a header row")
    stat = file.stat()
    return _encode(str(file), stat.st_mtime_ns, stat.st_size, target, target_kind, drop)


@functools.lru_cache(maxsize=8)
def _encode(path: str, _mtime: int, _size: int, target: str, target_kind: str, drop: tuple[str, ...]) -> EncodedTable:
    if target_kind not in TARGET_KINDS:
        raise DataError(f"a CSV dataset's task must be one of: {', '.join(TARGET_KINDS)} (got {target_kind!r})")
    header, rows = _read_rows(Path(path))
    if target not in header:
        raise DataError(f"dataset.target={target!r} is not a column of {path}; columns: {', '.join(header)}")
    unknown = [name for name in drop if name not in header]
    if unknown:
        raise DataError(f"dataset.drop names {', '.join(unknown)}, not columns of {path}; columns: {', '.join(header)}")
    columns = {name: [row[i] for row in rows] for i, name in enumerate(header)}
    blocks, names = [], []
    for name in header:
        if name == target or name in drop:
            continue
        block, block_names = _encode_column(name, columns[name])
        blocks.append(block)
        names += block_names
    if not blocks:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    targets, classes = _encode_target(path, target, columns[target], target_kind)
    return EncodedTable(np.concatenate(blocks, axis=1).astype(np.float32), tuple(names), targets, classes)


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            rows = [row for row in reader if row]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV file {path}: {error}") from None
    if not header or not rows:
        raise DataError(f"CSV file {path} needs a header row and at least one data row")
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise DataError(f"CSV file {path} line {number}: {len(row)} fields, the header has {len(header)}")
    return [name.strip() for name in header], [[value.strip() for value in row] for row in rows]


def _encode_column(name: str, values: list[str]) -> tuple[np.ndarray, list[str]]:
    """Standardize a numeric column (missing → 0), or one-hot encode a categorical one (+ a missing indicator)."""
    missing = np.array([value.lower() in MISSING for value in values])
    numbers = _as_numbers(values, missing)
    if numbers is not None:
        present = numbers[~missing]
        mean = present.mean() if len(present) else 0.0
        std = present.std() if len(present) > 1 else 0.0
        scaled = (numbers - mean) / (std if std > 0 else 1.0)
        return np.where(missing, 0.0, scaled)[:, None], [name]
    categories = sorted({value for value, gone in zip(values, missing) if not gone})
    index = {category: i for i, category in enumerate(categories)}
    width = len(categories) + int(missing.any())
    block = np.zeros((len(values), width))
    for row, (value, gone) in enumerate(zip(values, missing)):
        block[row, len(categories) if gone else index[value]] = 1.0
    return block, [f"{name}={category}" for category in categories] + ([f"{name}=<missing>"] if missing.any() else [])


def _as_numbers(values: list[str], missing: np.ndarray) -> np.ndarray | None:
    numbers = np.zeros(len(values))
    for row, (value, gone) in enumerate(zip(values, missing)):
        if gone:
            continue
        try:
            numbers[row] = float(value)
        except ValueError:
            return None
        if not math.isfinite(numbers[row]):
            return None
    return numbers


def _encode_target(path: str, target: str, values: list[str], kind: str) -> tuple[np.ndarray, tuple[str, ...]]:
    gaps = [row + 2 for row, value in enumerate(values) if value.lower() in MISSING]
    if gaps:
        raise DataError(f"CSV file {path}: target {target!r} is missing on line {gaps[0]} ({len(gaps)} rows in all)")
    if kind == "classification":
        classes = tuple(sorted(set(values), key=_class_order))
        index = {name: i for i, name in enumerate(classes)}
        return np.array([index[value] for value in values], dtype=np.int64), classes
    try:
        return np.array([float(value) for value in values], dtype=np.float32), ()
    except ValueError as error:
        raise DataError(f"CSV file {path}: regression target {target!r} is not numeric ({error}); "
                        "use dataset.task=classification for labels") from None


def _class_order(name: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 before 10), then the others alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)
