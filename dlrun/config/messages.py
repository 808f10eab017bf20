"""What an error says in one line, and the exit code it ends a command with.

The CLI and the tools report every failure through `describe_error`: a dlrun error's own
message, Hydra's unknown group option with the valid choices, an OmegaConf error naming the key
and what would be valid; anything else as its type and first line, with a hint to set
HYDRA_FULL_ERROR=1 for the traceback.
"""

from __future__ import annotations

import re
from dataclasses import fields, is_dataclass
from typing import Any

from hydra.errors import HydraException, MissingConfigException
from omegaconf.errors import (
    ConfigKeyError,
    InterpolationResolutionError,
    InterpolationToMissingValueError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from dlrun.config import schema
from dlrun.config.schema import RUNTIME_HINTS, Config
from dlrun.errors import DlrunError, find_cause


def exit_code(error: BaseException) -> int:
    """2 for bad input (config, checkpoint, data files), 3 for divergence, 1 for anything else."""
    dlrun_error = find_cause(error, DlrunError)  # also when raised inside a resolver or a Hydra plugin
    if dlrun_error is not None:
        return dlrun_error.exit_code
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return 2
    return 1


def describe_error(error: BaseException) -> str:
    """One line: what was wrong and, where known, the valid choices."""
    dlrun_error = find_cause(error, DlrunError)
    if dlrun_error is not None:
        return str(dlrun_error)
    missing = find_cause(error, MissingConfigException)
    if missing is not None and missing.options is not None and missing.missing_cfg_file:
        group, _, option = str(missing.missing_cfg_file).rpartition("/")
        return f"unknown {group} '{option}'; valid choices: {', '.join(sorted(missing.options))}"
    omegaconf_error = find_cause(error, OmegaConfBaseException)
    if omegaconf_error is not None:
        return describe_omegaconf_error(omegaconf_error)
    if isinstance(error, HydraException):
        return " ".join(str(error).split())
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first_line} (set HYDRA_FULL_ERROR=1 for the traceback)"


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
        return getattr(schema, type_name, None)
    return type_name
