"""Optimizer and learning-rate scheduler construction from their config groups."""

from __future__ import annotations

from typing import Any, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.schema import instantiate_group


def parameter_groups(model: nn.Module, weight_decay: float, decay_bias_and_norm: bool) -> list[dict[str, Any]]:
    """L2 weight decay as optimizer parameter groups.

    Without `decay_bias_and_norm`, 1-D parameters (biases, batch-norm scales and shifts) get
    no decay: shrinking them does not regularise the function and hurts normalised nets.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if decay_bias_and_norm or weight_decay == 0:
        return [{"params": trainable, "weight_decay": weight_decay}]
    decayed = [p for p in trainable if p.dim() > 1]
    exempt = [p for p in trainable if p.dim() <= 1]
    return [group for group in ({"params": decayed, "weight_decay": weight_decay},
                                {"params": exempt, "weight_decay": 0.0}) if group["params"]]


def build_optimizer(optimizer_cfg: DictConfig, model: nn.Module, regularization: DictConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, regularization.weight_decay, regularization.decay_bias_and_norm)
    return instantiate_group(optimizer_cfg, "optimizer")(groups)


class Scheduler:
    """A torch LR scheduler plus when it steps (`interval`: epoch or step) and on what."""

    def __init__(self, scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer) -> None:
        self.torch_scheduler = instantiate_group(scheduler_cfg, "scheduler")(optimizer)
        self.interval = scheduler_cfg.get("interval", "epoch")
        self.monitor = scheduler_cfg.get("monitor")  # e.g. val/loss for ReduceLROnPlateau

    def step(self, metrics: Optional[dict[str, float]] = None) -> None:
        if self.monitor is not None:
            self.torch_scheduler.step(metrics[self.monitor])
        else:
            self.torch_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.torch_scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch_scheduler.load_state_dict(state)


def build_scheduler(scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer) -> Optional[Scheduler]:
    """None for `scheduler=none` (a constant learning rate)."""
    if scheduler_cfg.get("_target_") is None:
        return None
    return Scheduler(scheduler_cfg, optimizer)
