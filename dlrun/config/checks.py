"""Checking a composed config before any compute: `validate` returns it typed, or raises one line.

Fixed sections are typed by the schema's dataclasses (a typo'd key, a wrong type, a missing
value). Group options are checked against their `_target_`'s signature, as the table of
dlrun.config.signatures records it (no import of the target, nor of torch): a key it does not
accept, a required argument left out, a scalar of the wrong type (a number where the signature
says float or int, also inside a union such as torch's `float | Tensor`). No number anywhere in
the config may be infinite or NaN. Then each section's ranges and choices.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlrun.config.build import is_metric_driven
from dlrun.config.messages import describe_omegaconf_error, runtime_arg_message
from dlrun.config.schema import (AMP_MODES, AUGMENT_CHOICES, COMPILE_MODES, DEDICATED_TASKS, DEVICE_TYPES,
                                 HOST_ALLOCATORS, META_KEYS, RUNTIME_ARGS, SCHEDULER_INTERVALS, TASK_KINDS, Config)
from dlrun.config.signatures import PLAIN_TYPES, signature_of
from dlrun.errors import ConfigError, DlrunError, find_cause


def validate(cfg: DictConfig) -> DictConfig:
    """Return `cfg` merged onto the schema, or raise ConfigError with one line naming the key."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
    try:
        typed = OmegaConf.merge(OmegaConf.structured(Config), plain)
        resolved = OmegaConf.to_container(typed, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as error:
        data_error = find_cause(error, DlrunError)  # e.g. a resolver that reads a missing dataset file
        if data_error is not None:
            raise data_error from None
        raise ConfigError(describe_omegaconf_error(error)) from None
    for group in META_KEYS:
        _check_group(group, resolved[group])
    _check_finite(resolved)
    _check_ranges(resolved)
    return typed


def _check_finite(tree: Any, key: str = "") -> None:
    """No infinite or NaN number anywhere: `optimizer.lr=inf` would only show up as a diverged loss."""
    if isinstance(tree, dict):
        for name, value in tree.items():
            _check_finite(value, f"{key}.{name}" if key else str(name))
    elif isinstance(tree, (list, tuple)):
        for index, value in enumerate(tree):
            _check_finite(value, f"{key}[{index}]")
    elif isinstance(tree, float) and not math.isfinite(tree):
        raise ConfigError(f"{key}={tree} is not a finite number")


def _check_group(group: str, options: dict[str, Any]) -> None:
    target = options.get("_target_")
    if target is None:
        return  # e.g. scheduler=none
    try:
        signature = signature_of(target)  # the stored table: no import of the target (nor torch)
    except Exception:
        raise ConfigError(f"{group}._target_: cannot import '{target}'") from None
    parameters = signature["parameters"]
    given = {k for k in options if not k.startswith("_")} - META_KEYS[group]
    for key in sorted(given):
        if key in RUNTIME_ARGS[group]:
            raise ConfigError(runtime_arg_message(f"{group}.{key}"))
        if key not in parameters and not signature["var_keyword"]:
            valid = sorted((set(parameters) - RUNTIME_ARGS[group]) | META_KEYS[group])
            raise ConfigError(f"unknown key '{group}.{key}'; valid keys for {target}: {', '.join(valid)}")
        if key in parameters:
            _check_type(f"{group}.{key}", options[key], parameters[key])
    for name, parameter in parameters.items():
        if parameter["required"] and name not in given and name not in RUNTIME_ARGS[group]:
            raise ConfigError(f"missing value for '{group}.{name}' (required by {target})")


def _check_type(key: str, value: Any, parameter: dict[str, Any]) -> None:
    """Check values whose annotation is a plain scalar type or a fixed-length tuple (`signatures.describe`);
    others are the target's to check."""
    length = parameter["length"]
    if length is not None and value is not None:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            example = parameter["example"]
            example = f", e.g. {key}=[{','.join(str(item) for item in example)}]" if example else ""
            raise ConfigError(f"wrong value for '{key}': expected a list of {length} values{example}; got {value!r}")
        for index, item in enumerate(value):
            if parameter["element_number"] and not _is_number(item):
                raise ConfigError(f"wrong type for '{key}[{index}]': expected a number, got {item!r}")
        return
    if value is not None and parameter["number"] and not _is_number(value):
        raise ConfigError(f"wrong type for '{key}': expected a number, got {value!r}")
    expected = parameter["type"]
    if expected is None or value is None:
        return
    accepted = PLAIN_TYPES[expected]
    if isinstance(value, bool) and bool not in accepted:
        accepted = ()
    if not isinstance(value, accepted):
        raise ConfigError(f"wrong type for '{key}': expected {expected}, got {value!r}")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_scheduler(scheduler: dict[str, Any]) -> None:
    interval = scheduler.get("interval")
    if scheduler.get("_target_") is None or interval is None:
        return
    _require_choice("scheduler.interval", interval, SCHEDULER_INTERVALS)
    if interval == "step" and is_metric_driven(scheduler["_target_"]):
        raise ConfigError("scheduler.interval=step cannot work for a metric-driven scheduler: "
                          "validation metrics exist once per epoch; use scheduler.interval=epoch")


def _check_model_fits_task(model: dict[str, Any], task: str) -> None:
    """A model that names a task (e.g. TinySSD: detection) needs a dataset of that task, and such a
    task needs such a model: a classifier cannot output boxes, nor TinySSD a class."""
    made_for = model.get("for_task")
    if made_for == task or (made_for is None and task not in DEDICATED_TASKS):
        return
    name = str(model.get("_target_", "?")).rpartition(".")[2]
    if made_for is None:
        raise ConfigError(f"dataset.task={task} needs a {task} model; model={name} is not one: "
                          f"use one of {', '.join(_options_for_task('model', task))}")
    raise ConfigError(f"model={name} is a {made_for} model but dataset.task is {task!r}: "
                      f"use a {made_for} dataset ({', '.join(_options_for_task('dataset', made_for))})")


def _options_for_task(group: str, task: str) -> list[str]:
    """The options of a config group shipped with dlrun made for `task` (for error messages): models that
    say `for_task: <task>`, datasets that say `task: <task>`."""
    from importlib.resources import files

    key = "for_task" if group == "model" else "task"
    names = []
    for entry in files("dlrun.conf").joinpath(group).iterdir():
        if entry.name.endswith(".yaml"):
            with entry.open() as handle:
                if OmegaConf.load(handle).get(key) == task:
                    names.append(entry.name.removesuffix(".yaml"))
    return sorted(names)


def _check_ranges(c: dict[str, Any]) -> None:
    """Values in range and choices among the valid ones, section by section."""
    lr = c["optimizer"].get("lr")
    if lr is not None:
        if not _is_number(lr):  # a target taking **kwargs: its signature said nothing about lr
            raise ConfigError(f"wrong type for 'optimizer.lr': expected a number, got {lr!r}")
        _require(lr > 0, "optimizer.lr", lr, "must be > 0")
    _check_regularization(c["regularization"], c["dataset"].get("task"))
    _check_scheduler(c["scheduler"])
    _check_trainer(c["trainer"], c["debug"])
    _check_dataset(c["dataset"], c["model"], c["debug"])
    _check_device(c["device"])


def _require(ok: bool, key: str, value: Any, rule: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value} is out of range: {rule}")


def _require_choice(key: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(str(choice) for choice in choices)}")


def _check_regularization(reg: dict[str, Any], task: Optional[str]) -> None:
    _require(0 <= reg["dropout"] < 1, "regularization.dropout", reg["dropout"], "must be in [0, 1)")
    _require(reg["weight_decay"] >= 0, "regularization.weight_decay", reg["weight_decay"], "must be >= 0")
    _require(reg["l1"] >= 0, "regularization.l1", reg["l1"], "must be >= 0")
    smoothing = reg["label_smoothing"]
    _require(0 <= smoothing < 1, "regularization.label_smoothing", smoothing, "must be in [0, 1)")
    if smoothing and task != "classification":
        raise ConfigError(f"regularization.label_smoothing={smoothing} needs a classification dataset; "
                          f"dataset.task is {task!r}")
    _require_choice("regularization.augment", reg["augment"], AUGMENT_CHOICES)
    scale = reg["crop_scale"]
    _require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "regularization.crop_scale", scale,
             "must be [min, max] area fractions with 0 < min <= max <= 1, e.g. [0.08,1.0]")
    patience = reg["early_stopping"]
    _require(patience >= 0, "regularization.early_stopping", patience, "must be >= 0 (0 = off)")
    clip = reg["grad_clip"]
    _require(clip is None or clip >= 0, "regularization.grad_clip", clip, "must be >= 0 (0 = off) or null")


def _check_trainer(trainer: dict[str, Any], debug: dict[str, Any]) -> None:
    _require(trainer["epochs"] >= 1, "trainer.epochs", trainer["epochs"], "must be >= 1")
    _require(trainer["batch_size"] >= 1, "trainer.batch_size", trainer["batch_size"], "must be >= 1")
    kfold = trainer["kfold"]
    _require(kfold is None or kfold >= 2, "trainer.kfold", kfold, "must be >= 2 or null")
    if trainer["kfold_refit"] and kfold is None:
        raise ConfigError("trainer.kfold_refit=true refits after K-fold cross-validation: set trainer.kfold=K too")
    every = trainer["save_every_steps"]
    _require(every is None or every >= 1, "trainer.save_every_steps", every, "must be >= 1 or null (off)")
    minutes = trainer["save_every_minutes"]
    _require(minutes is None or minutes > 0, "trainer.save_every_minutes", minutes, "must be > 0 or null (off)")
    for section, values in (("trainer", trainer), ("debug", debug)):
        value = values["limit_batches"]
        _require(value is None or value >= 1, f"{section}.limit_batches", value, "must be >= 1 or null")


def _check_dataset(dataset: dict[str, Any], model: dict[str, Any], debug: dict[str, Any]) -> None:
    _require_choice("dataset.task", dataset.get("task"), TASK_KINDS)
    _check_model_fits_task(model, dataset["task"])
    fraction = dataset.get("val_fraction", 0)
    _require(0 <= fraction < 1, "dataset.val_fraction", fraction, "must be in [0, 1)")
    for key, value in (("dataset.subset", dataset.get("subset")), ("debug.subset", debug["subset"])):
        _require(value is None or value >= 1, key, value, "must be >= 1 or null")


def _check_device(device: dict[str, Any]) -> None:
    _require_choice("device.type", device["type"], DEVICE_TYPES)
    for key, choices in (("amp", AMP_MODES), ("compile_mode", COMPILE_MODES), ("host_allocator", HOST_ALLOCATORS)):
        _require_choice(f"device.{key}", device[key], choices)
    for key in ("compile", "channels_last"):
        if device[key] not in ("auto", True, False):
            raise ConfigError(f"device.{key}={device[key]!r} is not one of: auto, true, false")
    _require(device["float_cache_mb"] >= 0, "device.float_cache_mb", device["float_cache_mb"], "must be >= 0 (0 = off)")
    threads = device["num_threads"]
    if not (threads is None or threads == "auto" or (isinstance(threads, int) and not isinstance(threads, bool))):
        raise ConfigError(f"device.num_threads={threads!r} is not one of: auto, a whole number >= 1, null")
    _require(threads in (None, "auto") or threads >= 1, "device.num_threads", threads, "must be >= 1, auto or null")
    timeout = device["dist_timeout_min"]
    _require(timeout > 0, "device.dist_timeout_min", timeout, "must be > 0 (minutes)")
