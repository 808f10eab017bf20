"""Checkpoints that continue a run exactly, and load with `torch.load(weights_only=True)`.

Everything inside is tensors or plain containers: state dicts, the epoch, the best metric,
every RNG state (Python, NumPy, torch CPU and CUDA, the data-shuffling generator) and the
resolved config.
"""

from __future__ import annotations

import random
import shutil
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
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
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


def restore_rng_states(states: dict[str, Any], shuffle_generator: torch.Generator) -> None:
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    shuffle_generator.set_state(states["shuffle"])


def resolve_resume_path(resume: str, latest_run: Optional[Path]) -> Path:
    """The checkpoint `trainer.resume` points at: `auto` (latest run of this config), a run dir or a file."""
    if resume == "auto":
        if latest_run is None:
            raise CheckpointError("trainer.resume=auto found no earlier run of this config with a checkpoint; "
                                  "start one without trainer.resume")
        return latest_run / "checkpoints" / LAST
    path = Path(resume).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / LAST if (path / "checkpoints").is_dir() else path / LAST
    if not path.is_file():
        raise CheckpointError(f"trainer.resume={resume}: no checkpoint at {path}")
    return path


def _to_lists(value: Any) -> Any:
    """Python's RNG state nests tuples; keep it as lists of ints for the weights-only loader."""
    if isinstance(value, tuple):
        return [_to_lists(item) for item in value]
    return value


def training_state(cfg: DictConfig, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   precision: Any, shuffle_generator: torch.Generator, progress: dict[str, Any],
                   monitor: str) -> dict[str, Any]:
    """Everything `restore_training_state` needs to continue the run exactly where it stands."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": precision.state_dict(),
        "epoch": progress["epoch"],
        "best": {"metric": monitor, "value": progress["best_value"], "epoch": progress["best_epoch"]},
        "metrics": progress["history"],  # the last epoch's, reported again if nothing is left to train
        "rng": rng_states(shuffle_generator),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def restore_training_state(source: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                           precision: Any, shuffle_generator: torch.Generator,
                           checkpoints: Path) -> dict[str, Any]:
    """Load `source` into the live objects and return the run's progress.

    The source run's last.pt and best.pt are copied into `checkpoints`, so the new run directory
    is complete even before its first epoch ends (and the final test uses the best weights).
    """
    state = load_checkpoint(source)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state.get("grad_scaler"))
    except (RuntimeError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"checkpoint {source} does not fit this model/optimizer: {str(error).splitlines()[0]}") from None
    restore_rng_states(state["rng"], shuffle_generator)
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name, original in ((LAST, source), (BEST, source.parent / BEST)):
        if original.exists() and original.resolve() != (checkpoints / name).resolve():
            shutil.copy2(original, checkpoints / name)
    return {"epoch": state["epoch"], "best_value": state["best"]["value"], "best_epoch": state["best"]["epoch"],
            "resumed_from": str(source), "history": state.get("metrics", {})}
