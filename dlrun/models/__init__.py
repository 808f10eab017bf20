"""Build the model a config names: `_target_` construction, then dlrun's own `init` key."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from torch import nn

from dlrun.config.build import instantiate_group
from dlrun.errors import ConfigError
from dlrun.models.init import INIT_SCHEMES, initialize

log = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig, dropout: float = 0.0) -> nn.Module:
    """Instantiate `model_cfg` and initialise its weights as `model_cfg.init` asks.

    A model with a `pretrained` attribute set keeps its weights: any other `init` is an error.
    `model.weights` names a file of weights loaded after that, in place of the initial ones
    (dlrun.models.weights).
    `dropout` is the requested regularization.dropout: a model with no dropout sites
    cannot honour it, which is said once in the log rather than silently ignored.
    """
    scheme = model_cfg.get("init", "default")
    if scheme not in INIT_SCHEMES:  # before building: a VGG takes a while to construct
        raise ConfigError(f"model.init={scheme!r} is not one of: {', '.join(INIT_SCHEMES)}")
    model = instantiate_group(model_cfg, "model")
    if getattr(model, "pretrained", False) and scheme != "default":
        raise ConfigError(f"model.init={scheme} would overwrite the pretrained weights; use model.init=default")
    initialize(model, scheme)
    if model_cfg.get("weights"):
        from dlrun.models.weights import load_weights

        load_weights(model, str(model_cfg.weights))
    if dropout > 0 and "dropout" not in model_cfg:
        log.warning("%s has no dropout sites: regularization.dropout=%s is not used",
                    type(model).__name__, dropout)
    return model
