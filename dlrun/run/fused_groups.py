"""Which jobs of a sweep train together as one stacked model (`hydra/launcher=fused`).

Jobs whose resolved configs differ only in values that each member of a stacked model keeps for
itself form one group: the optimizer's numbers (learning rate, momentum, betas, eps, ...), weight
decay, L1, dropout rates, label smoothing, gradient clipping, early stopping, `seed` (initial
weights, validation split and batch order), the initialisation (`model.init`, `model.init_param`:
only the initial weights), and the scheduler's numbers (none of which changes the
number of steps). Anything else — the model, the dataset, the batch size, the epochs, the optimizer
or scheduler type and its switches (nesterov, amsgrad, interval), the device — starts another group.

`solo_reason` names a setting that a group cannot be fused with at all (its jobs then run one by
one, as the basic launcher runs them).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from dlrun.run.resume import _flatten

# Values a member keeps for itself (its own optimizer, penalty, dropout rates, data order and weights).
FUSABLE_KEYS = frozenset({
    "seed", "dataset.seed", "model.dropout", "model.init", "model.init_param", "regularization.weight_decay", "regularization.l1",
    "regularization.dropout", "regularization.label_smoothing", "regularization.grad_clip",
    "regularization.early_stopping",
})
# Groups whose numbers are fusable: each member has its own optimizer and scheduler objects.
FUSABLE_NUMBER_SECTIONS = ("optimizer", "scheduler")
FUSED_TASKS = ("classification", "regression")


def group_key(cfg: DictConfig) -> tuple[tuple[str, str], ...]:
    """What the jobs of one group share: every resolved value except the fusable ones."""
    flat = _flatten(OmegaConf.to_container(cfg, resolve=True))  # lists stay values
    return tuple(sorted((key, json.dumps(value, sort_keys=True)) for key, value in flat.items()
                        if not is_fusable(key, value)))


def is_fusable(key: str, value: Any) -> bool:
    """Whether a job of a group may have its own `value` at `key`."""
    if key in FUSABLE_KEYS:
        return True
    return key.partition(".")[0] in FUSABLE_NUMBER_SECTIONS and _is_number(value)


def group_jobs(keys: Sequence[tuple]) -> list[list[int]]:
    """Indices of jobs with equal keys, groups in the order of their first job, jobs in order."""
    groups: dict[tuple, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return list(groups.values())


def differing_keys(configs: Sequence[DictConfig]) -> list[str]:
    """The fusable keys whose values differ between `configs` (what a group's members differ in), sorted."""
    flats = [_flatten(OmegaConf.to_container(cfg, resolve=True)) for cfg in configs]
    keys = set().union(*(flat.keys() for flat in flats))
    return sorted(key for key in keys if len({json.dumps(flat.get(key), sort_keys=True) for flat in flats}) > 1)


def solo_reason(cfg: DictConfig) -> Optional[str]:
    """Why jobs of this config cannot be fused (None: they can), read from the config alone."""
    if cfg.dataset.task not in FUSED_TASKS:
        return f"dataset.task={cfg.dataset.task} is not fused (only {' and '.join(FUSED_TASKS)} are)"
    if cfg.trainer.kfold:
        return "trainer.kfold runs its folds one by one"
    if cfg.trainer.log_grad_norms:
        return "trainer.log_grad_norms is not fused"
    if cfg.trainer.resume:
        return "trainer.resume starts each job from its own checkpoint"
    if cfg.device.amp == "fp16":
        return "device.amp=fp16 needs a gradient scaler per job (bf16 is fused)"
    if cfg.device.compile is True:
        return "device.compile=true compiles each job's own model"
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return "jobs on several processes (torchrun) are not fused"
    return None


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return True
    return isinstance(value, list) and bool(value) and all(_is_number(item) for item in value)
