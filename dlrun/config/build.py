"""Building a group option: its `_target_` called with the option's keys (dlrun's meta keys left out).

Every layer that constructs something from the config (datasets, models, optimizers,
schedulers) goes through `instantiate_group`, so a constructor's ValueError or TypeError reaches
the user as one line naming the group.
"""

from __future__ import annotations

from typing import Any, Optional

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from dlrun.config.schema import META_KEYS
from dlrun.config.signatures import signature_of
from dlrun.errors import ConfigError, DlrunError


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


def is_metric_driven(target: Optional[str]) -> bool:
    """Whether a scheduler `_target_` steps on a metric value (torch's ReduceLROnPlateau): from the
    signature table (dlrun.config.signatures), so that no torch import is needed to tell."""
    return bool(target) and signature_of(target)["metric_driven"]
