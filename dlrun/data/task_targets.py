"""Whether a dataset's targets can carry `dataset.task`, and those targets in the form its task trains on.

Any labelled source (in-memory arrays, an image folder, a CSV) carries any target kind its
targets fit: class indices for `classification`, 0/1 values for `binary`, 0/1 rows for
`multilabel`, numbers for `regression` (dlrun.data.targets). In-memory targets are converted
here (0/1 class indices become float 0/1 for binary, integers become floats for regression);
a file source reads its targets in the right kind itself. A text (next-token targets) carries
only `language_model`, boxes only `detection`. A mismatch is one line naming `dataset.task`,
found when the data is built, before any training.
"""

from __future__ import annotations

from typing import Any, Union

import torch
from omegaconf import DictConfig

from dlrun.data.files import FileSplit
from dlrun.data.splits import TensorSplit
from dlrun.data.targets import TARGET_KINDS, TargetScale
from dlrun.errors import ConfigError

Split = Union[TensorSplit, FileSplit]


def fit_targets(dataset: DictConfig, parts: dict[str, Split],
                extras: dict[str, Any]) -> tuple[dict[str, Split], dict[str, Any]]:
    """`parts` (train, val, test) with targets of `dataset.task`'s kind, and `extras` with the target's facts.

    For regression, `extras["target_scale"]` is the training targets' mean and std
    (dlrun.data.targets.TargetScale; `dataset.standardize_targets`, default true, trains on
    standardised targets).
    """
    task, source = str(dataset.task), source_name(dataset)
    _check_source_kind(task, parts["train"], extras, source)
    if task not in TARGET_KINDS:
        return parts, extras
    fitted = {name: _fitted(part, task, dataset, source) for name, part in parts.items()}
    if task == "regression":
        standardize = bool(dataset.get("standardize_targets", True))
        extras = {**extras, "target_scale": TargetScale.fit(split_targets(fitted["train"]), standardize).state()}
    return fitted, extras


def split_targets(part: Split) -> torch.Tensor:
    """The targets of a split as one tensor (a file split's are stacked from its samples)."""
    if isinstance(part, TensorSplit):
        return part.targets
    if not part.samples:
        return torch.zeros(0)
    targets = [target for _, target in part.samples]
    # Class indices and numbers in one call (a million files: milliseconds); padded boxes are tensors already
    return torch.stack(targets) if isinstance(targets[0], torch.Tensor) else torch.tensor(targets)


def source_name(dataset: DictConfig) -> str:
    """The dataset's loader, for messages: `load_digits`, `load_csv`, ..."""
    return str(dataset.get("_target_", "the dataset")).rpartition(".")[2]


def _check_source_kind(task: str, train: Split, extras: dict[str, Any], source: str) -> None:
    """A text carries language_model only, boxes detection only; and those tasks need such a source."""
    text = "tokens" in extras
    targets = split_targets(train)
    boxes = targets.ndim == 3  # (examples, objects, [class, x1, y1, x2, y2])
    if text and task != "language_model":
        raise ConfigError(f"dataset.task={task}: {source} gives a text whose targets are the next tokens; "
                          "it carries dataset.task=language_model only")
    if task == "language_model" and not text:
        raise ConfigError(f"dataset.task=language_model needs a text dataset (text, time_machine); {source} has no "
                          "vocabulary")
    if boxes and task != "detection":
        raise ConfigError(f"dataset.task={task}: {source} gives boxes; it carries dataset.task=detection only")
    if task == "detection" and not boxes:
        raise ConfigError(f"dataset.task=detection needs boxes (synthetic_detection, coco_folder, voc); {source} "
                          "has none")


def _fitted(part: Split, task: str, dataset: DictConfig, source: str) -> Split:
    """`part` with its targets checked (and, in memory, converted) for `task`."""
    targets = split_targets(part)
    if len(targets) == 0:
        return part
    converted = _converted(targets, task, dataset, source)
    if isinstance(part, TensorSplit) and converted is not targets:
        return TensorSplit(part.inputs, converted)
    if converted.dtype != targets.dtype or converted.shape != targets.shape:  # files: the loader reads the kind
        raise ConfigError(f"dataset.task={task}: {source} reads targets of dtype {targets.dtype} and shape "
                          f"{list(targets.shape[1:])}; it cannot carry this task")
    return part


def _converted(targets: torch.Tensor, task: str, dataset: DictConfig, source: str) -> torch.Tensor:
    if task == "regression":
        if targets.ndim not in (1, 2) or targets.dtype == torch.bool:
            raise ConfigError(f"dataset.task=regression needs one number or a row of numbers per example; "
                              f"{source} gives targets of shape {list(targets.shape[1:])}")
        numbers = targets if targets.dtype == torch.float32 else targets.float()
        if not torch.isfinite(numbers).all():
            raise ConfigError(f"dataset.task=regression: {source} has targets that are not finite numbers")
        return numbers
    if task == "classification":
        return _class_indices(targets, dataset, source)
    flat = targets.reshape(len(targets)) if task == "binary" and targets.ndim == 2 and targets.shape[1] == 1 \
        else targets
    wanted = 1 if task == "binary" else 2
    values = torch.unique(flat)
    if flat.ndim != wanted or not bool(torch.isin(values, torch.tensor([0, 1], dtype=values.dtype)).all()):
        raise ConfigError(_not_yes_no(task, flat, values, source))
    return flat if flat.dtype == torch.float32 else flat.float()


def _class_indices(targets: torch.Tensor, dataset: DictConfig, source: str) -> torch.Tensor:
    integral = not targets.dtype.is_floating_point or bool((targets == targets.round()).all())
    if targets.ndim != 1 or not integral:
        kind = f"rows of {targets.shape[1]} values" if targets.ndim == 2 else "numbers that are not class indices"
        raise ConfigError(f"dataset.task=classification needs one class index per example; {source} gives {kind}"
                          f": use dataset.task={'multilabel' if targets.ndim == 2 else 'regression'}")
    indices = targets if targets.dtype == torch.long else targets.long()
    outputs = dataset.get("num_outputs")
    low, high = int(indices.min()), int(indices.max())
    if low < 0 or (isinstance(outputs, int) and high >= outputs):
        valid = f"0 .. {outputs - 1}" if isinstance(outputs, int) else "from 0"
        raise ConfigError(f"dataset.task=classification: {source} has class indices {low} .. {high}, but "
                          f"dataset.num_outputs={outputs} classes ({valid})")
    return indices


def _not_yes_no(task: str, targets: torch.Tensor, values: torch.Tensor, source: str) -> str:
    shown = ", ".join(f"{value:g}" for value in values[:6].tolist()) + (", ..." if len(values) > 6 else "")
    if task == "binary":
        found = (f"rows of {targets.shape[1]} values" if targets.ndim == 2
                 else f"{len(values)} distinct values ({shown})")
        hint = "dataset.task=multilabel" if targets.ndim == 2 else (
            "dataset.task=classification" if len(values) > 2 else "labels 0 and 1")
        return f"dataset.task=binary needs one target 0 or 1 per example; {source} gives {found}: use {hint}"
    found = "one value per example" if targets.ndim == 1 else f"values {shown}"
    return (f"dataset.task=multilabel needs a row of 0/1 values per example (one per label); {source} gives "
            f"{found}: use dataset.task={'classification' if targets.ndim == 1 else 'regression'}")
