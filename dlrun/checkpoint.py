"""Checkpoints that continue a run exactly, and load with `torch.load(weights_only=True)`.

The contract (what `checkpoints/last.pt` and `best.pt` hold; everything is tensors or plain
containers):

- `model`, `optimizer`, `scheduler` (or None), `grad_scaler` (or None): state dicts; `model`
  holds the plain module's weights (never a compiled or distributed wrapper's).
- `epoch`: epochs completed (trained, validated, logged); `global_step`: optimizer steps so far.
- `position`: None at an epoch boundary; inside an epoch, where training of epoch `epoch + 1`
  stands (`EpochPosition.state_dict`): `step` of `batches` steps done, the epoch's batch
  `order`, the partial `sums` of the task's batch statistics and the `step_losses`, the task's
  `carried` state (a language model's hidden state), the `seconds` spent on the epoch so far.
  `step == batches` means trained but not yet validated.
- `best` (`metric`, `value`, `epoch`), `metrics` (the last completed epoch's), `stopped_early`
  (the epoch early stopping ended training, or None), `elapsed_s` (training time so far).
- `metrics_lines`: how many lines of the run's metrics.jsonl belong to this state; a resume
  drops the lines after them (and TensorBoard purges the steps after `epoch`).
- `rng`: Python, NumPy, torch CPU and CUDA, and the data-shuffling generator; from a run on
  several processes also `ranks`, the other processes' states (all but the shared shuffling
  generator) in rank order from rank 1. A process without saved states draws its own.
- `config`: the resolved config of the run that wrote it.

`last.pt` is rewritten at every epoch end, on the save schedule inside epochs and when a stop
signal arrives (dlrun.saving); `best.pt` at the epoch ends that improve the monitored metric.
Both are written atomically and durably (dlrun.atomic).

A checkpoint does not depend on how many processes wrote it (dlrun.distributed): positions
count global optimizer steps in the global batch order, and their sums and step losses are
totals over all processes; a run continues it on any number of processes.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun.atomic import atomic_write
from dlrun.errors import CheckpointError

LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, rename: a crash never leaves half a file."""
    atomic_write(path, lambda temporary: torch.save(state, temporary))


def load_checkpoint(path: Path, map_location: Any = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path} is not a dlrun checkpoint (no model state or epoch)")
    return state


def rng_states(shuffle_generator: torch.Generator) -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "python": _to_lists(random.getstate()),
        "numpy": {"keys": torch.from_numpy(numpy_state[1].astype(np.int64)), "pos": int(numpy_state[2]),
                  "has_gauss": int(numpy_state[3]), "cached_gaussian": float(numpy_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": shuffle_generator.get_state(),
    }


def restore_rng_states(states: dict[str, Any], shuffle_generator: torch.Generator, rank: int = 0) -> bool:
    """Restore the states process `rank` saved (rank 0's elsewhere); False when it saved none of its own."""
    others = states.get("ranks") or []
    own = states if rank == 0 or rank > len(others) else {**others[rank - 1], "shuffle": states["shuffle"]}
    _restore_rng(own, shuffle_generator)
    return own is not states or rank == 0


def _restore_rng(states: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    shuffle_generator.set_state(states["shuffle"])


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
class Progress:
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

    def resume_point(self) -> dict[str, Any]:
        """Where training continues: `step` steps into `epoch`, and in words (status.json, the log)."""
        if self.position is None:
            return {"epoch": self.epoch + 1, "step": 0, "position": f"end of epoch {self.epoch}"}
        return {"epoch": self.position.epoch, "step": self.position.step, "position": self.position.describe()}


@dataclass
class TrainingObjects:
    """The live objects whose state a checkpoint holds."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # dlrun.schedulers.Scheduler or None
    precision: Any  # dlrun.precision.Precision
    shuffle_generator: torch.Generator


def training_state(cfg: DictConfig, objects: TrainingObjects, progress: Progress, monitor: str,
                   position: Optional[EpochPosition] = None, rng: Optional[dict[str, Any]] = None,
                   elapsed_s: float = 0.0, metrics_lines: int = 0) -> dict[str, Any]:
    """Everything `restore_training_state` needs to continue the run exactly where it stands.

    `rng` replaces the current RNG states (a snapshot taken where `position` was reached).
    """
    return {
        "model": objects.model.state_dict(),
        "optimizer": objects.optimizer.state_dict(),
        "scheduler": objects.scheduler.state_dict() if objects.scheduler is not None else None,
        "grad_scaler": objects.precision.state_dict(),
        "epoch": progress.epoch,
        "global_step": position.global_step if position is not None else progress.global_step,
        "position": position.state_dict() if position is not None else None,
        "best": {"metric": monitor, "value": progress.best_value, "epoch": progress.best_epoch},
        "metrics": progress.history,  # the last epoch's, reported again if nothing is left to train
        "stopped_early": progress.stopped_early,
        "elapsed_s": elapsed_s,
        "metrics_lines": metrics_lines,
        "rng": rng if rng is not None else rng_states(objects.shuffle_generator),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def restore_training_state(source: Path, objects: TrainingObjects, device: torch.device,
                           checkpoints: Path, rank: int = 0) -> Progress:
    """Load `source` into the live objects and return the run's progress (`rank`: whose RNG states).

    When `source` lies in another run (branching off with trainer.resume=<file>), its last.pt
    and best.pt are copied into `checkpoints`, so the new run directory is complete even
    before its first save (and the final test uses the best weights).
    """
    state = load_checkpoint(source)
    try:
        objects.model.load_state_dict(state["model"])
        objects.optimizer.load_state_dict(state["optimizer"])
        if objects.scheduler is not None and state.get("scheduler") is not None:
            objects.scheduler.load_state_dict(state["scheduler"])
        objects.precision.load_state_dict(state.get("grad_scaler"))
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model/optimizer: {str(error).splitlines()[0]}") from None
    own_rng = restore_rng_states(state["rng"], objects.shuffle_generator, rank)
    if rank == 0:  # rank 0 alone writes the run directory
        checkpoints.mkdir(parents=True, exist_ok=True)
        for name, original in ((LAST, source), (BEST, source.parent / BEST)):
            if original.exists() and original.resolve() != (checkpoints / name).resolve():
                shutil.copy2(original, checkpoints / name)
    position = state.get("position")
    return Progress(epoch=state["epoch"], global_step=state.get("global_step", 0),
                    best_value=state["best"]["value"], best_epoch=state["best"]["epoch"],
                    stopped_early=state.get("stopped_early"), history=state.get("metrics", {}),
                    elapsed_s=state.get("elapsed_s", 0.0), metrics_lines=state.get("metrics_lines", state["epoch"]),
                    position=EpochPosition.from_state_dict(position, device) if position else None,
                    resumed_from=str(source), own_rng_restored=own_rng)


def _to_lists(value: Any) -> Any:
    """Python's RNG state nests tuples; keep it as lists of ints for the weights-only loader."""
    if isinstance(value, tuple):
        return [_to_lists(item) for item in value]
    return value


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
