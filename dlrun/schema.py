"""Typed configuration schema, checked right after composition and before any compute.

Fixed sections (trainer, regularization, device, debug) are dataclasses. Groups whose fields
depend on the chosen option (model, dataset, optimizer, scheduler) are checked against the
signature of their `_target_`, so adding an option needs no schema change: a key the target
does not accept is an error, and so is a required argument left out.
"""

from __future__ import annotations

import inspect
import re
import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from dlrun.errors import ConfigError, DlrunError, find_cause
from dlrun.host_memory import HOST_ALLOCATORS
from dlrun.tasks import TASKS


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 64
    limit_batches: Optional[int] = None
    resume: Optional[str] = None  # auto | a run directory (continued in place) | a checkpoint file (a new run)
    kfold: Optional[int] = None  # K-fold cross-validation: K runs, val = one fold each
    # last.pt inside epochs too: every N optimizer steps and/or every M minutes (null = off).
    save_every_steps: Optional[int] = None
    save_every_minutes: Optional[float] = 10.0
    # Per-layer gradient norms to TensorBoard (grad_norm/...), summed on the device, read once per epoch.
    log_grad_norms: bool = False


@dataclass
class RegularizationConfig:
    weight_decay: float = 0.0
    # False (d2l's and most references' choice): biases and norm-layer weights get no decay.
    decay_bias_and_norm: bool = False
    # Strength of an L1 penalty λ·Σ|w| added to the loss (same parameters as weight decay).
    l1: float = 0.0
    dropout: float = 0.0
    # Cross-entropy label smoothing (classification tasks only).
    label_smoothing: float = 0.0
    # Batch-wise training-set augmentation on the device: one of data.augment.AUGMENTS.
    augment: str = "none"
    # Area range (fractions of the image) of augment=imagenet's random resized crop.
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # Max gradient norm; 0 turns clipping off, null uses the task's default (language models: 1).
    grad_clip: Optional[float] = None
    # Stop after this many epochs without a better validation metric; 0 = never.
    early_stopping: int = 0


@dataclass
class DeviceConfig:
    type: str = "auto"
    amp: str = "off"
    channels_last: Any = "auto"  # auto | true | false (dlrun.device.wants_channels_last)
    compile: Any = "auto"  # auto | true | false (a bool from the command line, or "auto")
    compile_mode: str = "default"
    cudnn_benchmark: bool = True
    deterministic: bool = False
    num_threads: Optional[int] = None
    # Several processes (torchrun, a multi-task Slurm job): BatchNorm over the global batch (CUDA only),
    # and how long a process waits for the others at an exchange before the run fails.
    sync_batchnorm: bool = False
    dist_timeout_min: float = 30.0
    # In-memory image splits held as floats at the model's input size when they fit (MiB; 0 = never).
    float_cache_mb: float = 1024.0
    host_allocator: str = "tuned"  # tuned | system (dlrun.host_memory)


@dataclass
class DebugConfig:
    max_epochs: Optional[int] = None
    limit_batches: Optional[int] = None
    subset: Optional[int] = None


@dataclass
class SweepConfig:
    resume: Optional[str] = None


@dataclass
class Config:
    seed: int = 0
    name: Optional[str] = None
    output_root: str = "outputs"
    model: Any = field(default_factory=dict)
    dataset: Any = field(default_factory=dict)
    optimizer: Any = field(default_factory=dict)
    scheduler: Any = field(default_factory=dict)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# Keys a group option may carry besides its target's arguments: dlrun reads them itself.
META_KEYS: dict[str, set[str]] = {
    "model": {"input_size", "init", "for_task"},  # for_task: the one task a model is made for (detection)
    "dataset": {"task", "num_outputs", "input_shape", "resize", "val_fraction", "subset", "log_target"},
    "optimizer": set(),
    "scheduler": {"interval", "monitor"},
}
# Arguments dlrun supplies when it builds the object, so the YAML must not set them.
RUNTIME_ARGS: dict[str, set[str]] = {
    "model": set(),
    "dataset": set(),
    "optimizer": {"params", "weight_decay"},
    "scheduler": {"optimizer"},
}
RUNTIME_HINTS = {
    "optimizer.weight_decay": "set weight decay with regularization.weight_decay",
}
DEVICE_TYPES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")



def target_arguments(group_cfg: DictConfig, group: str) -> dict[str, Any]:
    """The resolved keys of a group option that go to its `_target_` (dlrun's meta keys removed).

    Resolved while still attached to the whole config, so `${dataset...}` interpolations work.
    """
    resolved = OmegaConf.to_container(group_cfg, resolve=True)
    return {key: value for key, value in resolved.items() if key not in META_KEYS[group]}


def instantiate_group(group_cfg: DictConfig, group: str) -> Any:
    """`instantiate` a group option; a constructor's ValueError/TypeError becomes a ConfigError."""
    try:
        return instantiate(target_arguments(group_cfg, group), _convert_="all")
    except InstantiationException as error:
        cause = error.__cause__
        if isinstance(cause, DlrunError):  # e.g. DataError: already the one line to show
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            raise ConfigError(f"{group}={group_cfg._target_.rpartition('.')[2]}: {cause}") from cause
        raise


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
    _check_ranges(resolved)
    return typed


def describe_omegaconf_error(error: OmegaConfBaseException) -> str:
    """One line for an OmegaConf error: which key, what is wrong, what would be valid."""
    key = getattr(error, "full_key", None) or getattr(error, "key", None) or "?"
    message = str(getattr(error, "msg", None) or error).splitlines()[0]
    if isinstance(error, ConfigKeyError) or "not in struct" in message or "not in '" in message:
        return unknown_key_message(str(key))
    if isinstance(error, InterpolationToMissingValueError):  # e.g. num_outputs read from a dataset.path left ???
        missing = re.search(r"Missing mandatory value: ([\w.\[\]]+)", message)
        key = missing.group(1) if missing else key
    if isinstance(error, (MissingMandatoryValue, InterpolationToMissingValueError)):
        return f"missing value for '{key}': set it, e.g. `dlrun {key}=...`"
    if isinstance(error, ValidationError):
        return f"wrong type for '{key}': {message}"
    if isinstance(error, InterpolationResolutionError):
        return f"cannot resolve '{key}': {message}"
    return f"invalid value for '{key}': {message}"


def unknown_key_message(full_key: str) -> str:
    """Name the unknown key and list the valid ones where the schema knows them."""
    if full_key in RUNTIME_HINTS:  # a key dlrun fills in, e.g. the optimizer's weight decay
        return runtime_arg_message(full_key)
    parent, _, _ = full_key.rpartition(".")
    node: Any = Config
    for part in parent.split(".") if parent else []:
        types = {f.name: f.type for f in fields(node)} if is_dataclass(node) else {}
        node = _dataclass_named(types.get(part))
    if node is not None and is_dataclass(node):
        where = f"of {parent}" if parent else "at the top level"
        valid = ", ".join(f.name for f in fields(node))
        return f"unknown key '{full_key}'; valid keys {where}: {valid}"
    return f"unknown key '{full_key}'; list the valid ones with `dlrun --cfg job --package {parent}`"


def runtime_arg_message(full_key: str) -> str:
    """For a key dlrun passes to the target itself (RUNTIME_ARGS): where to set it instead."""
    return f"'{full_key}' cannot be set here: {RUNTIME_HINTS.get(full_key, 'dlrun sets it')}"


def _dataclass_named(type_name: Any) -> Any:
    if isinstance(type_name, str):  # annotations are strings under `from __future__ import annotations`
        return globals().get(type_name)
    return type_name


def _check_group(group: str, options: dict[str, Any]) -> None:
    target = options.get("_target_")
    if target is None:
        return  # e.g. scheduler=none
    try:
        factory = get_object(target)
    except Exception:
        raise ConfigError(f"{group}._target_: cannot import '{target}'") from None
    parameters = inspect.signature(factory).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    given = {k for k in options if not k.startswith("_")} - META_KEYS[group]
    for key in sorted(given):
        if key in RUNTIME_ARGS[group]:
            raise ConfigError(runtime_arg_message(f"{group}.{key}"))
        if key not in parameters and not accepts_any:
            valid = sorted((set(parameters) - RUNTIME_ARGS[group]) | META_KEYS[group])
            raise ConfigError(f"unknown key '{group}.{key}'; valid keys for {target}: {', '.join(valid)}")
        if key in parameters:
            _check_type(f"{group}.{key}", options[key], parameters[key].annotation, parameters[key].default)
    for name, parameter in parameters.items():
        required = parameter.default is inspect.Parameter.empty and parameter.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            inspect.Parameter.KEYWORD_ONLY,
        )
        if required and name not in given and name not in RUNTIME_ARGS[group]:
            raise ConfigError(f"missing value for '{group}.{name}' (required by {target})")


_PLAIN_TYPES = {int: (int,), float: (int, float), bool: (bool,), str: (str,),
                "int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(key: str, value: Any, annotation: Any, default: Any = inspect.Parameter.empty) -> None:
    """Check values whose annotation is a plain scalar type or a fixed-length tuple; others are the target's."""
    length = _tuple_length(annotation)
    if length is not None and value is not None:
        if not isinstance(value, (list, tuple)) or len(value) != length:
            example = (f", e.g. {key}=[{','.join(str(item) for item in default)}]"
                       if isinstance(default, tuple) and len(default) == length else "")
            raise ConfigError(f"wrong value for '{key}': expected a list of {length} values{example}; got {value!r}")
        return
    accepted = _PLAIN_TYPES.get(annotation)
    if accepted is None or value is None:
        return
    if isinstance(value, bool) and bool not in accepted:
        accepted = ()
    if not isinstance(value, accepted):
        expected = annotation if isinstance(annotation, str) else annotation.__name__
        raise ConfigError(f"wrong type for '{key}': expected {expected}, got {value!r}")


def _tuple_length(annotation: Any) -> Optional[int]:
    """n for `tuple[X, Y, ...n types]` (also inside `Optional[...]` / `X | None`); None for anything else."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        lengths = {_tuple_length(member) for member in typing.get_args(annotation)} - {None}
        return lengths.pop() if len(lengths) == 1 else None
    arguments = typing.get_args(annotation)
    if typing.get_origin(annotation) is tuple and arguments and Ellipsis not in arguments:
        return len(arguments)
    return None


def _check_scheduler(scheduler: dict[str, Any]) -> None:
    from dlrun.schedulers import INTERVALS, is_metric_driven  # schedulers builds on this module

    interval = scheduler.get("interval")
    if scheduler.get("_target_") is None or interval is None:
        return
    if interval not in INTERVALS:
        raise ConfigError(f"scheduler.interval={interval!r} is not one of: {', '.join(INTERVALS)}")
    if interval == "step" and is_metric_driven(scheduler["_target_"]):
        raise ConfigError("scheduler.interval=step cannot work for a metric-driven scheduler: "
                          "validation metrics exist once per epoch; use scheduler.interval=epoch")


# Tasks whose datasets need a model made for them (one whose YAML says `for_task: <task>`).
DEDICATED_TASKS = ("detection",)


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
    from dlrun.data.augment import AUGMENTS  # dlrun.data builds on this module

    def require(ok: bool, key: str, value: Any, rule: str) -> None:
        if not ok:
            raise ConfigError(f"{key}={value} is out of range: {rule}")

    lr = c["optimizer"].get("lr")
    if lr is not None:
        require(lr > 0, "optimizer.lr", lr, "must be > 0")
    reg = c["regularization"]
    require(0 <= reg["dropout"] < 1, "regularization.dropout", reg["dropout"], "must be in [0, 1)")
    require(reg["weight_decay"] >= 0, "regularization.weight_decay", reg["weight_decay"], "must be >= 0")
    require(reg["l1"] >= 0, "regularization.l1", reg["l1"], "must be >= 0")
    smoothing = reg["label_smoothing"]
    require(0 <= smoothing < 1, "regularization.label_smoothing", smoothing, "must be in [0, 1)")
    if smoothing and c["dataset"].get("task") != "classification":
        raise ConfigError(f"regularization.label_smoothing={smoothing} needs a classification dataset; "
                          f"dataset.task is {c['dataset'].get('task')!r}")
    if reg["augment"] not in AUGMENTS:
        raise ConfigError(f"regularization.augment={reg['augment']!r} is not one of: {', '.join(AUGMENTS)}")
    scale = reg["crop_scale"]
    require(len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1, "regularization.crop_scale", scale,
            "must be [min, max] area fractions with 0 < min <= max <= 1, e.g. [0.08,1.0]")
    patience = reg["early_stopping"]
    require(patience >= 0, "regularization.early_stopping", patience, "must be >= 0 (0 = off)")
    clip = reg["grad_clip"]
    require(clip is None or clip >= 0, "regularization.grad_clip", clip, "must be >= 0 (0 = off) or null")
    _check_scheduler(c["scheduler"])
    trainer = c["trainer"]
    require(trainer["epochs"] >= 1, "trainer.epochs", trainer["epochs"], "must be >= 1")
    require(trainer["batch_size"] >= 1, "trainer.batch_size", trainer["batch_size"], "must be >= 1")
    kfold = trainer["kfold"]
    require(kfold is None or kfold >= 2, "trainer.kfold", kfold, "must be >= 2 or null")
    every = trainer["save_every_steps"]
    require(every is None or every >= 1, "trainer.save_every_steps", every, "must be >= 1 or null (off)")
    minutes = trainer["save_every_minutes"]
    require(minutes is None or minutes > 0, "trainer.save_every_minutes", minutes, "must be > 0 or null (off)")
    for section in ("trainer", "debug"):
        value = c[section]["limit_batches"]
        require(value is None or value >= 1, f"{section}.limit_batches", value, "must be >= 1 or null")
    dataset = c["dataset"]
    if dataset.get("task") not in TASKS:
        raise ConfigError(f"dataset.task={dataset.get('task')!r} is not one of: {', '.join(TASKS)}")
    _check_model_fits_task(c["model"], dataset["task"])
    fraction = dataset.get("val_fraction", 0)
    require(0 <= fraction < 1, "dataset.val_fraction", fraction, "must be in [0, 1)")
    for key, value in (("dataset.subset", dataset.get("subset")), ("debug.subset", c["debug"]["subset"])):
        require(value is None or value >= 1, key, value, "must be >= 1 or null")
    device = c["device"]
    if device["type"] not in DEVICE_TYPES:
        raise ConfigError(f"device.type={device['type']!r} is not one of: {', '.join(DEVICE_TYPES)}")
    for key, choices in (("amp", AMP_MODES), ("compile_mode", COMPILE_MODES), ("host_allocator", HOST_ALLOCATORS)):
        if device[key] not in choices:
            raise ConfigError(f"device.{key}={device[key]!r} is not one of: {', '.join(choices)}")
    for key in ("compile", "channels_last"):
        if device[key] not in ("auto", True, False):
            raise ConfigError(f"device.{key}={device[key]!r} is not one of: auto, true, false")
    require(device["float_cache_mb"] >= 0, "device.float_cache_mb", device["float_cache_mb"], "must be >= 0 (0 = off)")
    threads = device["num_threads"]
    require(threads is None or threads >= 1, "device.num_threads", threads, "must be >= 1 or null")
    timeout = device["dist_timeout_min"]
    require(timeout > 0, "device.dist_timeout_min", timeout, "must be > 0 (minutes)")
