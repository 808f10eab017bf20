"""A CSV file as a tabular dataset, preprocessed as d2l does for Kaggle's house prices.

Numeric columns are standardized (mean 0, std 1) and their missing values filled with 0 (the
mean); other columns are one-hot encoded, with an extra `<missing>` indicator column (pandas'
`get_dummies(dummy_na=True)`, as d2l uses). The statistics and categories come from the whole
file (features only, never the target), as in d2l, so the feature count is known from the file
alone — which is how `${dlrun.csv_num_features:...}` gives models their input shape before any
loading.

The fitted preprocessing is a `TableEncoder`: its state (`state_dict()`, plain JSON) is saved in
the run directory at training time (dlrun.data.card) and applied unchanged to new rows by
dlrun-predict and dlrun-eval. A category the training file never had goes to the `<missing>`
column; a missing value is filled as in training. What is read is checked as it is read
(dlrun.data.csv_checks): repeated column names, non-finite numbers, a byte-order mark.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

from dlrun.data.csv_checks import BOM, header_names, not_a_number, numeric_column
from dlrun.data.splits import DataSplits, TensorSplit, split_off
from dlrun.data.targets import TARGET_KINDS, encode_targets
from dlrun.errors import DataError

MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}
MISSING_CATEGORY = "<missing>"
Target = Union[str, list[str], tuple[str, ...]]  # one target column, or several (regression, multilabel)


@dataclass(frozen=True)
class NumericColumn:
    """Standardized with the training file's statistics; a missing value becomes 0 (the mean)."""

    name: str
    mean: float = 0.0
    std: float = 1.0  # 1 for a constant column, which then stays finite


@dataclass(frozen=True)
class CategoricalColumn:
    """One-hot over the training file's categories, then a `<missing>` column (missing or unseen values)."""

    name: str
    categories: tuple[str, ...]


Column = Union[NumericColumn, CategoricalColumn]


@dataclass(frozen=True)
class TableEncoder:
    """The per-column preprocessing fitted on a training file, applied unchanged to any rows."""

    columns: tuple[Column, ...]

    @classmethod
    def fit(cls, header: list[str], rows: list[list[str]], skip: tuple[str, ...] = (),
            source: str = "the CSV file") -> "TableEncoder":
        """Numeric columns (most present values numbers: `csv_checks.numeric_column`) get their mean and std;
        the others their categories."""
        columns: list[Column] = []
        for i, name in enumerate(header):
            if name in skip:
                continue
            values = [row[i] for row in rows]
            missing = np.array([_is_missing(value) for value in values])
            numbers = numeric_column(name, values, missing, source)
            if numbers is None:
                categories = sorted({value for value, gone in zip(values, missing) if not gone})
                columns.append(CategoricalColumn(name, tuple(categories)))
                continue
            present = numbers[~missing]
            std = float(present.std()) if len(present) > 1 else 0.0
            columns.append(NumericColumn(name, float(present.mean()) if len(present) else 0.0, std if std > 0 else 1.0))
        return cls(tuple(columns))

    @property
    def feature_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for column in self.columns:
            if isinstance(column, NumericColumn):
                names.append(column.name)
            else:
                names += [f"{column.name}={category}" for category in (*column.categories, MISSING_CATEGORY)]
        return tuple(names)

    def transform(self, header: list[str], rows: list[list[str]], source: str) -> np.ndarray:
        """float32 (rows, features); `header` may hold more columns (ids, the target) in any order.

        A feature column missing from `header`, or a word in a numeric column, is a DataError
        naming it (and the line, counting the header as line 1).
        """
        position = {name: i for i, name in enumerate(header)}
        position.update({BOM + name: i for name, i in list(position.items())})  # an encoder fitted with a BOM in a name
        absent = [column.name for column in self.columns if column.name not in position]
        if absent:
            also = f" ({len(absent)} of its columns are missing: {_listed(absent)})" if len(absent) > 1 else ""
            raise DataError(f"{source} has no column {absent[0]!r}{also}; the model reads the columns "
                            f"{_listed([column.name for column in self.columns])}")
        blocks = []
        for column in self.columns:
            values = [row[position[column.name]] for row in rows]
            if isinstance(column, NumericColumn):
                blocks.append(_standardized(column, values, source)[:, None])
            else:
                blocks.append(_one_hot(column, values))
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        """Plain JSON: {"columns": [{"name", "kind": "numeric", "mean", "std"}
        or {"name", "kind": "categorical", "categories"}, ...]}."""
        return {"columns": [{"name": c.name, "kind": "numeric", "mean": c.mean, "std": c.std}
                            if isinstance(c, NumericColumn) else
                            {"name": c.name, "kind": "categorical", "categories": list(c.categories)}
                            for c in self.columns]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TableEncoder":
        return cls(tuple(NumericColumn(c["name"], c["mean"], c["std"]) if c["kind"] == "numeric"
                         else CategoricalColumn(c["name"], tuple(c["categories"])) for c in state["columns"]))

    @classmethod
    def identity(cls, names: list[str]) -> "TableEncoder":
        """Numeric columns taken as they are: the encoder of a dataset whose features are already numbers."""
        return cls(tuple(NumericColumn(name) for name in names))


@dataclass(frozen=True)
class EncodedTable:
    features: np.ndarray  # float32 (rows, encoded features)
    feature_names: tuple[str, ...]
    targets: np.ndarray  # as dlrun.data.targets.encode_targets gives them for the target kind
    classes: tuple[str, ...]  # class (binary, multilabel: label) names in index order; empty for regression
    encoder: TableEncoder
    target_names: tuple[str, ...] = ()  # the target columns


def load_csv(path: str, target: Target, target_kind: str = "regression", drop: list[str] | None = None,
             test_fraction: float = 0.2, seed: int = 0, encoder: Optional[dict[str, Any]] = None,
             classes: Optional[list[str]] = None) -> DataSplits:
    """Rows of `path` as (encoded features, `target`), a test split of `test_fraction` drawn by seed.

    `target` is a column, or a list of columns (several regression targets, or one 0/1 column
    per label for multilabel); `target_kind` is dataset.task (dlrun.data.targets). `encoder` is a
    fitted encoder's state to apply instead of fitting one on this file, and `classes` the class
    (or label) names to index by: how dlrun-eval reads another labelled file exactly as the run's
    training rows were read. `extras` holds the feature names, the class names, the target
    columns and the encoder's state.
    """
    targets = _target_columns(target)
    if encoder is None and classes is None:
        table = encode_csv(path, targets, target_kind, tuple(drop or ()))
    else:
        fitted = TableEncoder.from_state(encoder) if encoder is not None else None
        table = _encode_with(fitted, path, targets, target_kind, tuple(drop or ()), classes)
    rows = TensorSplit(torch.from_numpy(table.features), torch.from_numpy(table.targets))
    train, test = split_off(rows, test_fraction, seed)
    return DataSplits(train=train, test=test,
                      extras={"feature_names": list(table.feature_names), "classes": list(table.classes),
                              "target_names": list(table.target_names), "encoder": table.encoder.state_dict()})


def encode_csv(path: str, target: Target, target_kind: str, drop: tuple[str, ...] = ()) -> EncodedTable:
    """Read and encode `path`; cached per file version, as the config resolvers ask too."""
    file = _existing(path)
    stat = file.stat()
    return _encode(str(file), stat.st_mtime_ns, stat.st_size, _target_columns(target), target_kind, drop)


def read_csv(path: Union[str, Path]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows (values stripped) of a CSV file; DataError when it cannot be read."""
    return _read_rows(_existing(str(path)))


@functools.lru_cache(maxsize=8)
def _encode(path: str, _mtime: int, _size: int, target: tuple[str, ...], target_kind: str,
            drop: tuple[str, ...]) -> EncodedTable:
    return _encode_with(None, path, target, target_kind, drop)


def _encode_with(encoder: Optional[TableEncoder], path: str, target: tuple[str, ...], target_kind: str,
                 drop: tuple[str, ...] = (), classes: Optional[list[str]] = None) -> EncodedTable:
    """Encode `path`'s features (with `encoder`, else one fitted on it) and its targets (indexed by `classes`)."""
    _check_kind(target_kind)
    header, rows = read_csv(path)
    for name in target:
        _check_target(path, name, header)
    if encoder is None:
        unknown = [name for name in drop if name not in header]
        if unknown:
            raise DataError(f"dataset.drop names {', '.join(unknown)}, not columns of {path}; "
                            f"columns: {', '.join(header)}")
        encoder = TableEncoder.fit(header, rows, skip=(*target, *drop), source=path)
        if not encoder.columns:
            raise DataError(f"{path} has no feature columns besides the target {', '.join(map(repr, target))}")
    encoded = encode_targets(target_kind, {name: [None if _is_missing(row[header.index(name)]) else
                                                  row[header.index(name)] for row in rows] for name in target},
                             f"CSV file {path}", classes)
    return EncodedTable(encoder.transform(header, rows, path), encoder.feature_names, encoded.values, encoded.classes,
                        encoder, encoded.names)


def _target_columns(target: Target) -> tuple[str, ...]:
    """dataset.target as a tuple of column names (a single name, or a list of them)."""
    return (target,) if isinstance(target, str) else tuple(str(name) for name in target)


def _existing(path: str) -> Path:
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.path: CSV file {file} not found; set dataset.path to a CSV file with a header row")
    return file


def _check_kind(target_kind: str) -> None:
    if target_kind not in TARGET_KINDS:
        raise DataError(f"a CSV dataset's task must be one of: {', '.join(TARGET_KINDS)} (got dataset.task="
                        f"{target_kind})")


def _check_target(path: str, target: str, header: list[str]) -> None:
    if target not in header:
        raise DataError(f"dataset.target={target!r} is not a column of {path}; columns: {', '.join(header)}")


def _read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a leading byte-order mark is dropped
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
    return header_names(path, header), [[value.strip() for value in row] for row in rows]


def _is_missing(value: str) -> bool:
    return value.lower() in MISSING


def _standardized(column: NumericColumn, values: list[str], source: str) -> np.ndarray:
    missing = np.array([_is_missing(value) for value in values])
    numbers = _as_numbers(values, missing)
    if numbers is None:
        line, value = next((row + 2, value) for row, value in enumerate(values)
                           if not _is_missing(value) and _as_numbers([value], np.array([False])) is None)
        raise DataError(f"{source} line {line}: column {column.name!r} holds {value!r}, {not_a_number(value)} "
                        "(the model was trained with numbers in it)")
    return np.where(missing, 0.0, (numbers - column.mean) / column.std)


def _one_hot(column: CategoricalColumn, values: list[str]) -> np.ndarray:
    index = {category: i for i, category in enumerate(column.categories)}
    unseen = len(column.categories)  # the <missing> column: missing values and categories training never saw
    block = np.zeros((len(values), unseen + 1))
    hot = [unseen if _is_missing(value) else index.get(value, unseen) for value in values]
    block[np.arange(len(values)), hot] = 1.0
    return block


def _listed(names: list[str], shown: int = 12) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names)} in all)" if len(names) > shown else "")


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
