"""Targets of every kind from the values a file holds, and the scale regression targets are trained at.

A labelled source (an image folder's CSV, a CSV table) names its target column(s); `encode_targets`
turns their text into what `dataset.task` trains on, the same way for every source:

- `classification`: one column of labels → class indices (int64), classes in `class_order`;
- `binary`: one column of two values → 0/1 (float32); the second value in `class_order` is the
  positive class (1 over 0, true over false, yes over no, and otherwise the alphabetically later);
- `multilabel`: one column of space-separated labels (Kaggle's multi-label image sets: "haze primary"),
  or several 0/1 columns, one per label → a 0/1 row per example (float32), labels sorted;
- `regression`: one or several numeric columns → float32 (N,) or (N, targets).

`TargetScale` holds the mean and standard deviation of regression targets on the training split:
with `standardized` the model learns (target - mean) / std and its outputs go back to the
target's units (`to_units`, `TargetUnits`) wherever they are reported, predicted or exported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dlrun.errors import DataError

TARGET_KINDS = ("classification", "binary", "multilabel", "regression")


def class_order(name: str) -> tuple[int, float, str]:
    """Numeric labels in numeric order (2 before 10), then the others alphabetically."""
    try:
        return (0, float(name), name)
    except ValueError:
        return (1, 0.0, name)


@dataclass(frozen=True)
class EncodedTargets:
    values: np.ndarray  # int64 class indices; float32 0/1 (binary), 0/1 rows (multilabel) or numbers (regression)
    classes: tuple[str, ...]  # classification: class names; binary: (negative, positive); multilabel: labels
    names: tuple[str, ...]  # the target columns


def encode_targets(kind: str, columns: dict[str, list[Optional[str]]], source: str,
                   classes: Optional[Sequence[str]] = None) -> EncodedTargets:
    """The targets `kind` trains on, from the target `columns` (name → values, None where missing).

    `classes` are the names to index by instead of those found (dlrun-eval passes the model's):
    a value outside them is an error. Lines in messages count the header as line 1.
    """
    if kind not in TARGET_KINDS:
        raise DataError(f"{source}: dataset.task={kind!r} cannot be read from a file's columns; "
                        f"use one of {', '.join(TARGET_KINDS)}")
    names = tuple(columns)
    if not names:
        raise DataError(f"{source}: no target column given")
    if kind == "multilabel":
        return _multilabel(columns, source, classes)
    if kind == "regression":
        return EncodedTargets(_numbers(columns, source), (), names)
    if len(names) > 1:
        raise DataError(f"{source}: dataset.task={kind} reads one target column, got {len(names)} "
                        f"({', '.join(names)}); several columns are for regression or multilabel")
    values = _present(names[0], columns[names[0]], source)
    found = tuple(sorted(set(values), key=class_order))
    if kind == "binary" and classes is None and len(found) != 2:
        shown = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "")
        raise DataError(f"{source}: dataset.task=binary needs two distinct values in {names[0]!r}, found "
                        f"{len(found)} ({shown}); use dataset.task=classification for more classes")
    known = tuple(classes) if classes is not None else found
    index = {name: i for i, name in enumerate(known)}
    unknown = [value for value in found if value not in index]
    if unknown:
        raise DataError(f"{source}: the data's classes {', '.join(unknown[:10])}{' ...' if len(unknown) > 10 else ''} "
                        f"are not classes of the model; its classes: {', '.join(known[:30])}")
    dtype = np.float32 if kind == "binary" else np.int64
    return EncodedTargets(np.array([index[value] for value in values], dtype=dtype), known, names)


def _present(name: str, values: list[Optional[str]], source: str) -> list[str]:
    gaps = [line for line, value in enumerate(values, start=2) if value is None]
    if gaps:
        raise DataError(f"{source}: target {name!r} is missing on line {gaps[0]} ({len(gaps)} rows in all)")
    return [str(value) for value in values]


def _numbers(columns: dict[str, list[Optional[str]]], source: str) -> np.ndarray:
    """float32 (rows,) for one column, (rows, columns) for several; a word or a number float32 cannot hold
    (inf, nan, 1e39) is an error naming the line."""
    blocks = []
    for name, values in columns.items():
        numbers = np.zeros(len(values), dtype=np.float32)
        for line, value in enumerate(_present(name, values, source), start=2):
            try:
                number = float(value)
            except ValueError:
                raise DataError(f"{source} line {line}: target {name!r} holds {value!r}, not a number "
                                "(dataset.task=regression); use dataset.task=classification for labels") from None
            with np.errstate(over="ignore"):  # 1e39 becomes inf in float32: that is the point
                numbers[line - 2] = number
            if not math.isfinite(numbers[line - 2]):
                raise DataError(f"{source} line {line}: target {name!r} is {value!r}, not a finite number in "
                                "float32; fix or drop that row")
        blocks.append(numbers)
    return np.stack(blocks, axis=1) if len(blocks) > 1 else blocks[0]


def _multilabel(columns: dict[str, list[Optional[str]]], source: str,
                classes: Optional[Sequence[str]]) -> EncodedTargets:
    names = tuple(columns)
    if len(names) > 1:  # one 0/1 column per label
        values = _numbers(columns, source)
        if not np.isin(values, (0.0, 1.0)).all():
            raise DataError(f"{source}: dataset.task=multilabel with several target columns ({', '.join(names)}) "
                            "needs 0 or 1 in each; for one column of labels name it alone")
        if classes is not None and tuple(classes) != names:
            raise DataError(f"{source}: the label columns {', '.join(names)} are not the model's "
                            f"({', '.join(classes)})")
        return EncodedTargets(values, names, names)
    tags = [set((value or "").split()) for value in columns[names[0]]]  # an empty cell: no label applies
    found = tuple(sorted(set().union(*tags), key=class_order))
    labels = tuple(classes) if classes is not None else found
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(f"{source}: the data's labels {', '.join(unknown[:10])} are not labels of the model; "
                        f"its labels: {', '.join(labels[:30])}")
    if len(labels) < 2:
        raise DataError(f"{source}: dataset.task=multilabel found {len(labels)} label(s) in {names[0]!r} "
                        "(space-separated); it needs at least 2 (one label: dataset.task=binary)")
    index = {label: i for i, label in enumerate(labels)}
    values = np.zeros((len(tags), len(labels)), dtype=np.float32)
    for row, present in enumerate(tags):
        values[row, [index[label] for label in present]] = 1.0
    return EncodedTargets(values, labels, names)


@dataclass(frozen=True)
class TargetScale:
    """Mean and standard deviation of each regression target on the training split.

    With `standardized`, the model is trained on (target - mean) / std, so its outputs are in
    those units: `to_units` brings them back. Without it, outputs are in the target's units
    already (the statistics still put R² and errors on a common scale).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    standardized: bool = True

    @classmethod
    def fit(cls, targets: torch.Tensor, standardized: bool) -> "TargetScale":
        values = targets.detach().double().cpu().reshape(len(targets), -1)
        if len(values) == 0:
            raise DataError("regression needs training rows to fit the targets' mean and standard deviation")
        std = values.std(dim=0, unbiased=False)  # as scikit-learn's StandardScaler
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant target stays finite
        return cls(tuple(values.mean(dim=0).tolist()), tuple(std.tolist()), standardized)

    @classmethod
    def identity(cls, count: int = 1) -> "TargetScale":
        return cls((0.0,) * count, (1.0,) * count, standardized=False)

    def state(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "standardized": self.standardized}

    @classmethod
    def from_state(cls, state: Optional[dict[str, Any]]) -> Optional["TargetScale"]:
        if state is None:
            return None
        return cls(tuple(state["mean"]), tuple(state["std"]), bool(state["standardized"]))

    @property
    def count(self) -> int:
        return len(self.mean)

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as float32 tensors on `device`, made once per device."""
        return _scale_tensors(self.mean, self.std, device)

    def to_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """Model outputs (batch, targets) in the targets' own units."""
        if not self.standardized:
            return outputs
        mean, std = self.tensors(outputs.device)
        return outputs * std + mean

    def to_model(self, targets: torch.Tensor) -> torch.Tensor:
        """Targets (batch, targets) in the units the model learns."""
        if not self.standardized:
            return targets
        mean, std = self.tensors(targets.device)
        return (targets - mean) / std


_SCALE_CACHE: dict[tuple[Any, ...], tuple[torch.Tensor, torch.Tensor]] = {}


def _scale_tensors(mean: tuple[float, ...], std: tuple[float, ...],
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # A host-to-device copy per step would cost a sync on CUDA: made once and reused.
    key = (mean, std, str(device))
    if key not in _SCALE_CACHE:
        _SCALE_CACHE[key] = (torch.tensor(mean, dtype=torch.float32, device=device),
                             torch.tensor(std, dtype=torch.float32, device=device))
    return _SCALE_CACHE[key]


class TargetUnits(nn.Module):
    """A regression model whose outputs are in the targets' units: its outputs × std + mean.

    What prediction runs and what dlrun-export writes, so a user of the exported file gets
    values in the target's units with nothing to undo.
    """

    def __init__(self, model: nn.Module, scale: TargetScale) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(scale.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(scale.std, dtype=torch.float32))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs) * self.std + self.mean
