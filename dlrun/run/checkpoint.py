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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from dlrun.atomic import atomic_write
from dlrun.engine.position import EpochPosition, TrainingProgress
from dlrun.errors import CheckpointError

if TYPE_CHECKING:
    from dlrun.engine.setup import Training

LAST, BEST = "last.pt", "best.pt"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, rename: a crash never leaves half a file.

    torch.save writes through a Python file object, so a full disk surfaces as the OSError it is
    (with a path name it writes through torch's own writer as an errno-less RuntimeError).
    """

    def write(temporary: Path) -> None:
        with open(temporary, "wb") as handle:
            torch.save(state, handle)

    atomic_write(path, write)


def load_checkpoint(path: Path, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A dlrun checkpoint's state; CheckpointError if it is missing, unreadable or not dlrun's. `mmap`: tensors
    are read from the file when used (a reader of the small entries does not read the weights)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt ({reason})") from None
    if not isinstance(state, dict) or "model" not in state or "epoch" not in state:
        raise CheckpointError(f"checkpoint {path} is not a dlrun checkpoint (no model state or epoch)")
    return state


def read_saved_config(path: Path) -> tuple[dict[str, Any], tuple[int, int]]:
    """The resolved config a checkpoint was written with, and how far it is (epoch, global step);
    CheckpointError if it is unreadable.

    Memory-mapped: deciding which run a directory holds reads the small entries, not the weights.
    """
    try:
        state = load_checkpoint(path, mmap=True)
    except CheckpointError as error:
        raise CheckpointError(f"{error}; nothing was changed") from None
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"checkpoint {path} is not a dlrun checkpoint (no config in it); nothing was changed")
    return state["config"], (int(state["epoch"]), int(state.get("global_step", 0)))


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


def training_state(cfg: DictConfig, training: Training, progress: TrainingProgress,
                   position: Optional[EpochPosition] = None, rng: Optional[dict[str, Any]] = None,
                   elapsed_s: float = 0.0, metrics_lines: int = 0) -> dict[str, Any]:
    """Everything `restore_training_state` needs to continue the run exactly where it stands.

    `rng` replaces the current RNG states (a snapshot taken where `position` was reached).
    """
    trainer = training.trainer
    return {
        "model": training.model.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "grad_scaler": trainer.precision.state_dict(),
        "epoch": progress.epoch,
        "global_step": position.global_step if position is not None else progress.global_step,
        "position": position.state_dict() if position is not None else None,
        "best": {"metric": training.monitor, "value": progress.best_value, "epoch": progress.best_epoch},
        "metrics": progress.history,  # the last epoch's, reported again if nothing is left to train
        "stopped_early": progress.stopped_early,
        "elapsed_s": elapsed_s,
        "metrics_lines": metrics_lines,
        "rng": rng if rng is not None else rng_states(training.shuffle_generator),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def restore_training_state(source: Path, training: Training, checkpoints: Path, rank: int = 0) -> TrainingProgress:
    """Load `source` into the live objects and return the run's progress (`rank`: whose RNG states).

    When `source` lies in another run (branching off with trainer.resume=<file>), its last.pt
    and best.pt are copied into `checkpoints`, so the new run directory is complete even
    before its first save (and the final test uses the best weights).
    """
    state = load_checkpoint(source)
    trainer = training.trainer
    try:
        training.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.scheduler is not None and state.get("scheduler") is not None:
            trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.precision.load_state_dict(state.get("grad_scaler"))
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model/optimizer: {str(error).splitlines()[0]}") from None
    own_rng = restore_rng_states(state["rng"], training.shuffle_generator, rank)
    if rank == 0:  # rank 0 alone writes the run directory
        checkpoints.mkdir(parents=True, exist_ok=True)
        for name, original in ((LAST, source), (BEST, source.parent / BEST)):
            if original.exists() and original.resolve() != (checkpoints / name).resolve():
                shutil.copy2(original, checkpoints / name)
    position = state.get("position")
    return TrainingProgress(epoch=state["epoch"], global_step=state.get("global_step", 0),
                    best_value=state["best"]["value"], best_epoch=state["best"]["epoch"],
                    stopped_early=state.get("stopped_early"), history=state.get("metrics", {}),
                    elapsed_s=state.get("elapsed_s", 0.0), metrics_lines=state.get("metrics_lines", state["epoch"]),
                    position=EpochPosition.from_state_dict(position, training.device) if position else None,
                    resumed_from=str(source), own_rng_restored=own_rng)


def _to_lists(value: Any) -> Any:
    """Python's RNG state nests tuples; keep it as lists of ints for the weights-only loader."""
    if isinstance(value, tuple):
        return [_to_lists(item) for item in value]
    return value
