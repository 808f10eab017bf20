"""Where training stands: inside an epoch (`EpochPosition`) and between epochs (`TrainingProgress`).

The training loop advances an `EpochPosition` after every step without reading anything back
from the device; a checkpoint (dlrun.run.checkpoint) holds both, so a run continues exactly where
it stopped. `check_finite` reads the steps' losses once per epoch (and before a mid-epoch save).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from dlrun.errors import CheckpointError, TrainingDiverged


@dataclass
class EpochPosition:
    """How far training has got inside epoch `epoch`; with the RNG states, enough to continue exactly.

    The training loop advances it after every step without reading anything back from the
    device: `sums` and `step_losses` stay where they are computed until a save copies them.
    """

    epoch: int
    batches: int  # optimizer steps in a full epoch
    order: Optional[torch.Tensor]  # the epoch's batch order as the loader drew it (None: storage order)
    step_losses: torch.Tensor  # one entry per step; the first `step` are filled
    step: int = 0  # steps done in this epoch
    global_step: int = 0  # steps done in the whole run
    sums: Optional[torch.Tensor] = None  # the task's batch statistics summed over the steps done
    carried: Any = None  # the task's state carried from batch to batch, saved with the position
    seconds: float = 0.0  # training time spent on this epoch by earlier attempts
    saved_step: Optional[int] = None  # the step last.pt holds, when it holds a position in this epoch
    clock_start: float = field(default_factory=time.perf_counter)  # when this attempt took the epoch up

    @classmethod
    def start(cls, epoch: int, loader: Any, global_step: int, device: torch.device) -> "EpochPosition":
        """The start of an epoch: draws its batch order from the loader (a shuffle advances its generator)."""
        return cls(epoch=epoch, batches=len(loader), order=loader.epoch_order(),
                   step_losses=torch.empty(len(loader), device=device), global_step=global_step)

    @property
    def finished(self) -> bool:
        """All steps done: the epoch is trained but not yet validated."""
        return self.step >= self.batches

    def advance(self, loss: torch.Tensor, stats: torch.Tensor) -> None:
        """One optimizer step done: record its loss and batch statistics, on the device."""
        self.step_losses[self.step] = loss
        self.sums = stats if self.sums is None else self.sums + stats
        self.step += 1
        self.global_step += 1

    def seconds_so_far(self) -> float:
        """Time spent on this epoch, earlier attempts included."""
        return self.seconds + time.perf_counter() - self.clock_start

    def describe(self) -> str:
        if self.finished:
            return f"epoch {self.epoch} (trained, not yet validated)"
        return f"epoch {self.epoch}, step {self.step} of {self.batches}"

    def check_fits(self, batches: int, examples: int, shuffled: bool, source: Path) -> None:
        """A mid-epoch position continues only with the batches it was cut from."""
        if batches != self.batches or (shuffled and (self.order is None or len(self.order) != examples)):
            raise CheckpointError(f"checkpoint {source} stopped inside epoch {self.epoch} (step {self.step} of "
                                  f"{self.batches}), but this config makes {batches} batches of {examples} examples "
                                  "per epoch; continue it with the data and batch settings it was saved with")

    def state_dict(self) -> dict[str, Any]:
        """A CPU copy; the only place a mid-epoch save reads from the device."""
        return {"epoch": self.epoch, "batches": self.batches, "step": self.step, "global_step": self.global_step,
                "order": _to_cpu(self.order), "sums": _to_cpu(self.sums),
                "step_losses": _to_cpu(self.step_losses[:self.step]), "carried": _to_cpu(self.carried),
                "seconds": self.seconds_so_far()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device) -> "EpochPosition":
        step_losses = torch.empty(state["batches"], device=device)
        step_losses[:state["step"]] = state["step_losses"].to(device)
        return cls(epoch=state["epoch"], batches=state["batches"], order=state["order"], step_losses=step_losses,
                   step=state["step"], global_step=state["global_step"], sums=_to_device(state["sums"], device),
                   carried=_to_device(state["carried"], device), seconds=state["seconds"],
                   saved_step=state["step"])


@dataclass
class TrainingProgress:
    """Where the run stands between steps: what a checkpoint carries besides the live objects."""

    epoch: int = 0  # epochs completed
    global_step: int = 0
    best_value: Optional[float] = None
    best_epoch: Optional[int] = None
    stopped_early: Optional[int] = None
    history: dict[str, float] = field(default_factory=dict)  # the last completed epoch's metrics
    elapsed_s: float = 0.0  # training time of earlier attempts
    metrics_lines: int = 0  # lines of metrics.jsonl written up to this state
    position: Optional[EpochPosition] = None  # set when resuming inside an epoch
    resumed_from: Optional[str] = None
    own_rng_restored: bool = True  # False: a process other than rank 0 found no RNG states of its own

    def record_epoch(self, epoch: int, history: dict[str, float], global_step: int, monitor: str, mode: str) -> bool:
        """Epoch `epoch` is trained and validated (`history` holds its metrics); whether `monitor` improved."""
        value = history[monitor]
        improved = not math.isnan(value) and (
            self.best_value is None or (value > self.best_value if mode == "max" else value < self.best_value))
        if improved:
            self.best_value, self.best_epoch = value, epoch
        self.epoch, self.history, self.global_step = epoch, history, global_step
        return improved

    def resume_point(self) -> dict[str, Any]:
        """Where training continues: `step` steps into `epoch`, and in words (status.json, the log)."""
        if self.position is None:
            return {"epoch": self.epoch + 1, "step": 0, "position": f"end of epoch {self.epoch}"}
        return {"epoch": self.position.epoch, "step": self.position.step, "position": self.position.describe()}


def check_finite(position: EpochPosition) -> None:
    """Raise TrainingDiverged if a step of the epoch so far had a non-finite loss (one host sync).

    Run at the end of every epoch and before any mid-epoch save, never per step.
    """
    bad = (~torch.isfinite(position.step_losses[:position.step])).nonzero()
    if len(bad):
        if position.saved_step is not None:
            kept = f"last.pt keeps epoch {position.epoch}, step {position.saved_step}"
        elif position.epoch > 1:
            kept = "last.pt keeps the previous epoch"
        else:  # nothing was saved yet: say so rather than name a file that is not there
            kept = "no checkpoint was written before it"
        raise TrainingDiverged(f"loss became non-finite in epoch {position.epoch} at step {int(bad[0])} "
                               f"(of {position.batches}); {kept}. "
                               "Try a lower optimizer.lr or regularization.grad_clip")


def _to_cpu(value: Any) -> Any:
    """Tensors (also inside tuples and lists, as an LSTM's state) copied to the host."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, (tuple, list)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(item, device) for item in value)
    return value
