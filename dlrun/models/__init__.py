"""Build the model a config names: `_target_` construction, then dlrun's own `init` and `init_param` keys."""

from __future__ import annotations

import logging

from omegaconf import DictConfig
from torch import nn

from dlrun.config.build import instantiate_group
from dlrun.errors import ConfigError
from dlrun.models.init import Init

log = logging.getLogger(__name__)


def build_model(model_cfg: DictConfig, dropout: float = 0.0) -> nn.Module:
    """Instantiate `model_cfg` and initialise its weights as `model_cfg.init` (and `init_param`) ask.

    Kaiming's gain follows `model_cfg.activation` where the model has that knob (dlrun.models.init).
    A model with a `pretrained` attribute set keeps its weights: any other `init` is an error.
    `model.weights` names a file of weights loaded after that, in place of the initial ones
    (dlrun.models.weights).
    `dropout` is the requested regularization.dropout: a model with no dropout sites
    cannot honour it, which is said once in the log rather than silently ignored.
    """
    # checked before building: a VGG takes a while to construct
    init = Init.from_config(model_cfg.get("init", "default"), model_cfg.get("init_param"))
    model = instantiate_group(model_cfg, "model")
    if getattr(model, "pretrained", False) and init.scheme != "default":
        raise ConfigError(f"model.init={init.scheme} would overwrite the pretrained weights; use model.init=default")
    init.apply(model, model_cfg.get("activation"), model_cfg.get("activation_param"))
    if model_cfg.get("weights"):
        from dlrun.models.weights import load_weights

        load_weights(model, str(model_cfg.weights))
    if dropout > 0 and "dropout" not in model_cfg:
        log.warning("%s has no dropout sites: regularization.dropout=%s is not used",
                    type(model).__name__, dropout)
    return model
