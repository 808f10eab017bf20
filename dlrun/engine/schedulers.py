"""Learning-rate schedulers from the `scheduler` group, and when they step.

A scheduler option is a `_target_` (`_partial_: true`) that takes the optimizer. dlrun reads
two meta keys itself: `interval` (`epoch` or `step`: once per epoch or once per batch) and
`monitor` (the metric a ReduceLROnPlateau watches; null = the task's validation metric).
Arguments that depend on the run are filled in at build time when the YAML leaves them null:
`total_steps` (how many times the scheduler will step: epochs, or epochs x batches) and, for
ReduceLROnPlateau, `mode` (the monitored metric's better direction).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch
from hydra.utils import get_object
from omegaconf import DictConfig
from torch.optim import lr_scheduler

from dlrun.config.build import instantiate_group
from dlrun.errors import ConfigError

INTERVALS = ("epoch", "step")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: Optional[int] = None,
                  warmup_fraction: float = 0.25, warmup_start_factor: float = 0.1,
                  min_lr: float = 0.0) -> lr_scheduler.LRScheduler:
    """Linear warmup over the first `warmup_fraction` of `total_steps`, then cosine decay to `min_lr`.

    Built from torch's own LinearLR and CosineAnnealingLR (d2l 12.11's cosine scheduler with
    warmup). A fraction rather than a count keeps the shape when epochs or batches change.
    """
    if total_steps is None or total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0 <= warmup_fraction < 1:
        raise ValueError(f"warmup_fraction must be in [0, 1), got {warmup_fraction}")
    warmup = int(round(warmup_fraction * total_steps))
    cosine = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps - warmup, eta_min=min_lr)
    if warmup == 0:
        return cosine
    linear = lr_scheduler.LinearLR(optimizer, start_factor=warmup_start_factor, total_iters=warmup)
    return lr_scheduler.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])


def is_metric_driven(target: Optional[str]) -> bool:
    """Whether the scheduler steps on a metric value (torch's ReduceLROnPlateau)."""
    factory = get_object(target) if target else None
    return isinstance(factory, type) and issubclass(factory, lr_scheduler.ReduceLROnPlateau)


class Scheduler:
    """A torch LR scheduler plus when it steps (`interval`) and, if metric-driven, on what (`monitor`)."""

    def __init__(self, scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int,
                 steps_per_epoch: int, task_metric: str, task_mode: str) -> None:
        self.interval = scheduler_cfg.get("interval") or "epoch"
        runtime: dict[str, Any] = {}
        parameters = inspect.signature(get_object(scheduler_cfg._target_)).parameters
        if "total_steps" in parameters and scheduler_cfg.get("total_steps") is None:
            runtime["total_steps"] = epochs * (steps_per_epoch if self.interval == "step" else 1)
        self.monitor: Optional[str] = None
        if is_metric_driven(scheduler_cfg._target_):
            self.monitor = scheduler_cfg.get("monitor") or task_metric
            if scheduler_cfg.get("mode") is None:
                if self.monitor != task_metric:
                    raise ConfigError(f"scheduler.mode must be min or max when scheduler.monitor={self.monitor} "
                                      f"is not the task's metric ({task_metric})")
                runtime["mode"] = task_mode
        self.torch_scheduler = instantiate_group(scheduler_cfg, "scheduler")(optimizer, **runtime)

    def step(self, metrics: Optional[dict[str, float]] = None) -> None:
        if self.monitor is not None:
            self.torch_scheduler.step(metrics[self.monitor])
        else:
            self.torch_scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.torch_scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch_scheduler.load_state_dict(state)


def build_scheduler(scheduler_cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int,
                    steps_per_epoch: int, task_metric: str, task_mode: str) -> Optional[Scheduler]:
    """None for `scheduler=none` (a constant learning rate).

    `epochs` and `steps_per_epoch` are what this run will do (after debug caps and
    limit_batches); `task_metric` is the monitor's default (e.g. `val/acc`) and `task_mode`
    its direction (`max`).
    """
    if scheduler_cfg.get("_target_") is None:
        return None
    return Scheduler(scheduler_cfg, optimizer, epochs, steps_per_epoch, task_metric, task_mode)
