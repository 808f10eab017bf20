"""An error's one line for a command whose overrides are known: an unknown key of a group option
(`model=mlp model.foo=1`) lists the keys of the option those overrides chose, not a generic hint.

Hydra refuses `model.foo=1` while composing, before any of dlrun's checks run and before it
knows which model was chosen; composing again with the key added (`+model.foo=1`) gets the
checks' own line, which names the chosen target's keys (dlrun.config.checks).
"""

from __future__ import annotations

from typing import Optional

from omegaconf.errors import OmegaConfBaseException

from dlrun.config.checks import validate
from dlrun.config.messages import describe_error
from dlrun.config.schema import META_KEYS
from dlrun.errors import ConfigError, DlrunError, find_cause


def describe_command_error(error: BaseException, overrides: list[str]) -> str:
    """`describe_error(error)`, but with the chosen option's keys for an unknown key of a group option."""
    if find_cause(error, DlrunError) is not None:  # dlrun's own line says it all
        return describe_error(error)
    omegaconf_error = find_cause(error, OmegaConfBaseException)
    key = str(getattr(omegaconf_error, "full_key", None) or "")
    if key.partition(".")[0] in META_KEYS:
        return keys_of_chosen_option(key, overrides) or describe_error(error)
    return describe_error(error)


def keys_of_chosen_option(full_key: str, overrides: list[str]) -> Optional[str]:
    """The checks' line for `full_key` in the config `overrides` compose with that key added rather than
    overridden; None when that cannot be had (the key is not among the overrides, a sweep's `a,b`)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    added = [f"+{override}" if override.partition("=")[0] == full_key else override for override in overrides]
    if added == overrides:
        return None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="dlrun.conf", version_base="1.3"):
            validate(compose(config_name="config", overrides=added))
    except ConfigError as refused:
        return str(refused) if f"'{full_key}'" in str(refused) else None
    except Exception:  # another problem of the command: the general hint stands
        return None
    return None
