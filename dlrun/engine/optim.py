"""Optimizer construction from its config group, and the regularization terms that act on parameters."""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from torch import nn

from dlrun.config.build import instantiate_group


def partition_parameters(model: nn.Module, decay_bias_and_norm: bool) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters split into (those weight decay and L1 act on, the exempt ones).

    Without `decay_bias_and_norm`, 1-D parameters (biases, batch-norm scales and shifts) are
    exempt: shrinking them does not regularise the function and hurts normalised nets.
    """
    regularized: list[nn.Parameter] = []
    exempt: list[nn.Parameter] = []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (regularized if decay_bias_and_norm or parameter.dim() > 1 else exempt).append(parameter)
    return regularized, exempt


def parameter_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict[str, Any]]:
    """L2 weight decay as optimizer parameter groups: decayed parameters, then the exempt ones."""
    # Without decay, one group in the model's parameter order (the optimizer state's indices).
    regularized, exempt = partition_parameters(model, decay_bias_and_norm or weight_decay == 0)
    return [group for group in ({"params": regularized, "weight_decay": weight_decay},
                                {"params": exempt, "weight_decay": 0.0}) if group["params"]]


def build_l1_penalty(model: nn.Module, strength: float,
                     decay_bias_and_norm: bool) -> Optional[Callable[[], torch.Tensor]]:
    """strength · Σ|w| over the parameters weight decay acts on, as a term to add to the loss
    (it adds strength · sign(w) to each gradient); None when `strength` is 0."""
    if not strength:
        return None
    parameters = partition_parameters(model, decay_bias_and_norm)[0]

    def penalty() -> torch.Tensor:
        return strength * torch.stack([p.abs().sum() for p in parameters]).sum()

    return penalty


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module, regularization: DictConfig) -> torch.optim.Optimizer:
    """The configured optimizer over `model`'s parameter groups.

    An optimizer YAML that sets `fused: null` gets torch's fused kernel when every parameter
    is a floating-point tensor on CUDA (torch's fastest path there) and the default
    implementation otherwise (foreach on CUDA, the for-loop on CPU); `fused: true/false` is
    passed through unchanged.
    """
    groups = parameter_groups(model, regularization.weight_decay, regularization.decay_bias_and_norm)
    implementation: dict[str, Any] = {}
    if "fused" in optimizer_cfg and optimizer_cfg.fused is None:
        implementation["fused"] = _fused_is_valid(optimizer_cfg._target_, [p for g in groups for p in g["params"]])
    return instantiate_group(optimizer_cfg, "optimizer")(groups, **implementation)


def _fused_is_valid(target: str, parameters: list[torch.Tensor]) -> bool:
    accepts_fused = "fused" in inspect.signature(get_object(target)).parameters
    return accepts_fused and all(p.is_cuda and torch.is_floating_point(p) for p in parameters)
