"""One member of a fused group: a sweep job's training objects, its attempt, its progress and its files.

A member is a solo run in everything but the arithmetic: its `Training` is what `build_training`
makes of its config (its own data order, initial weights, optimizer, scheduler and task), whose
parameters view the group's stacked tensors once the group binds them; its `Attempt` writes its
status.json; its `MetricsLog` its metrics.jsonl and TensorBoard events; its checkpoints are the
solo format (`checkpoint.training_state`), so each member resumes, evaluates and exports as a
solo run does.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from dlrun.atomic import write_json
from dlrun.engine.position import EpochPosition, TrainingProgress
from dlrun.engine.setup import Training
from dlrun.models.summary import ModelSummary
from dlrun.report.curves import write_run_curves
from dlrun.report.metrics_log import MetricsLog
from dlrun.run import checkpoint
from dlrun.run.attempt import Attempt, storage_failure
from dlrun.run.fused_jobs import MemberJob, log_ended
from dlrun.run.run_dir import SUMMARY_FILE

log = logging.getLogger("dlrun")
# How a member stands: training, stopped (early stopping, or nothing left to train: tested with the
# others), diverged, failed, skipped (completed before), completed.
TRAINING, STOPPED, DIVERGED, FAILED, SKIPPED, COMPLETED = (
    "training", "stopped", "diverged", "failed", "skipped", "completed")


@dataclass
class Member:
    """A job of a fused group with its training objects (`slot`: its row in the stacked model)."""

    job: MemberJob
    cfg: DictConfig
    training: Training
    slot: int = 0
    attempt: Optional[Attempt] = None
    progress: TrainingProgress = field(default_factory=TrainingProgress)
    metrics_log: Optional[MetricsLog] = None
    model_summary: Optional[ModelSummary] = None
    outcome: str = TRAINING
    best_value: float = math.nan  # what the job returns to the sweeper
    started: float = field(default_factory=time.perf_counter)
    # The resolved config as a plain DictConfig: what every checkpoint carries, converted in a tenth of the time.
    saved_cfg: DictConfig = field(init=False)

    def __post_init__(self) -> None:
        self.saved_cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))

    @property
    def number(self) -> int:
        return self.job.number

    @property
    def run_dir(self) -> Path:
        return self.attempt.run_dir if self.attempt is not None else self.job.run_dir

    @property
    def checkpoints(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def trains(self) -> bool:
        return self.outcome == TRAINING

    @property
    def running(self) -> bool:
        """Not yet ended: training, or stopped and waiting for the test."""
        return self.outcome in (TRAINING, STOPPED)

    def say(self, message: str, *args: Any, console: bool = False) -> None:
        """A line in this member's log (and on the console when `console`)."""
        log.info(message, *args, extra={"member": self.number, "console": console})

    def elapsed(self) -> float:
        """Training time of this run: earlier attempts, and this group's so far."""
        return self.progress.elapsed_s + time.perf_counter() - self.started

    def snapshot(self, position: Optional[EpochPosition], rng: Optional[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint of where this member stands, in the solo format, in storage of its own."""
        state = checkpoint.training_state(self.saved_cfg, self.training, self.progress, position, rng,
                                          elapsed_s=self.elapsed(), metrics_lines=self.metrics_log.lines)
        # The member's parameters (and any state kept beside them) are views of the group's stacked
        # tensors: saved as they are, each would carry every member's weights.
        return {**state, "model": _own_copies(state["model"]), "optimizer": _own_copies(state["optimizer"])}

    def save(self, state: dict[str, Any], best: bool = False) -> None:
        """last.pt (and, first, best.pt: a kill between the two leaves a last.pt that redoes this epoch)."""
        if best:
            checkpoint.save_checkpoint(self.checkpoints / checkpoint.BEST, state)
        checkpoint.save_checkpoint(self.checkpoints / checkpoint.LAST, state)

    def rng(self) -> dict[str, Any]:
        return checkpoint.rng_states(self.training.shuffle_generator)

    def end(self, outcome: str, error: Optional[BaseException] = None) -> None:
        """Record how this member's attempt ended (status.json), release its run directory, close its metrics log."""
        self.outcome = outcome
        try:
            if self.attempt is not None and self.attempt.status is not None:
                if error is None:
                    self.attempt.status.write("completed")
                else:
                    self.attempt.status.ended_by(storage_failure(error, self.run_dir) or error)
        finally:
            if self.attempt is not None and self.attempt.lock is not None:
                self.attempt.lock.release()  # the run directory is free for the next command
        if self.metrics_log is not None:
            self.metrics_log.close()
            self.metrics_log = None
        log_ended(self.number)

    def complete(self, summary: dict[str, Any]) -> None:
        """summary.json, curves.png, status completed."""
        write_json(self.run_dir / SUMMARY_FILE, summary)
        write_run_curves(self.run_dir, self.training.trainer.task.metric)
        self.best_value = math.nan if summary["best_value"] is None else float(summary["best_value"])
        self.end(COMPLETED)


def _own_copies(tree: Any) -> Any:
    """`tree` with every tensor that views a larger storage copied into its own."""
    if isinstance(tree, torch.Tensor):
        whole = tree.untyped_storage().nbytes()
        return tree.clone() if whole != tree.numel() * tree.element_size() else tree
    if isinstance(tree, dict):
        copied = type(tree)((key, _own_copies(value)) for key, value in tree.items())
        if hasattr(tree, "_metadata"):  # a module state dict's versions, as state_dict() returns them
            copied._metadata = tree._metadata
        return copied
    if isinstance(tree, (list, tuple)):
        return type(tree)(_own_copies(value) for value in tree)
    return tree
