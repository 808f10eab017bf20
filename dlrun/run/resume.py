"""Which run an attempt continues (`trainer.resume`), decided before anything is written.

A run directory is one run from start to end: a resumed run goes on in it, appending to its
metrics.jsonl, its TensorBoard run and its dlrun.log, and status.json lists the attempts.

- `trainer.resume=null`: a fresh run, unless the run directory already holds a run of the same
  config (a requeued Slurm/submitit job, `sweep.resume`, a fixed `hydra.run.dir`): if it
  completed, there is nothing to do; if it has a checkpoint (whatever ended it: a signal, a
  failure, a lost node), it continues from it in place; without one it starts again (what the
  earlier attempt wrote all came after its last checkpoint, as the lines a resume drops). A run
  of another config there is refused; a sweep job whose config changed runs again, the earlier
  run moved into `earlier/<n>/`.
- `trainer.resume=auto`: continue the latest run of this config under `output_root`, in place.
- `trainer.resume=<run dir>`: continue that run in place; its config must be this one (up to
  `run_dir.RESUME_INSENSITIVE_KEYS`, so `trainer.epochs` may grow).
- `trainer.resume=<file.pt>`: a new run, in this attempt's own directory, that starts from that
  checkpoint (fine-tuning, branching off); its config may differ.

Whether a directory holds a run, and which, comes from status.json and the checkpoint: the
checkpoint must be readable and of the config status.json names. A status.json that is damaged
(or missing beside checkpoints) is rebuilt from attempts.jsonl and the checkpoint's config; if
neither says which run it is, the attempt is refused.

Planning only reads; dlrun.run.admission locks the planned directory, plans again under the
lock and only then writes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun.errors import CheckpointError, ConfigError, RunDirectoryError
from dlrun.run.checkpoint import LAST, read_saved_config
from dlrun.run.run_dir import (RESUME_INSENSITIVE_KEYS, STATUS_FILE, checkpoint_paths, completed_summary,
                               config_fingerprint, find_latest_run, has_checkpoint, holds_run_files)
from dlrun.run.status import process_alive, read_status, rebuilt_status, status_damage

log = logging.getLogger("dlrun")


@dataclass
class ResumePlan:
    """What this attempt does."""

    run_dir: Path  # where it writes: this attempt's directory, or the run it continues
    checkpoint: Optional[Path] = None  # where training continues from; None: from scratch (or per fold)
    in_place: bool = False  # continuing run_dir's own history (metrics.jsonl, TensorBoard, attempts)
    done: Optional[dict[str, Any]] = None  # summary.json of a completed run of this config: nothing to do
    clear: bool = False  # remove an earlier attempt's outputs (it saved no checkpoint) before starting from scratch
    set_aside: bool = False  # move a run of another config into earlier/<n>/ (a sweep job that runs again)
    previous: Optional[dict[str, Any]] = None  # the run's status record (rebuilt when status.json is damaged)
    notes: dict[str, Any] = field(default_factory=dict)  # facts for this attempt's record (a rebuilt status)


def plan_resume(cfg: DictConfig, run_dir: Path, fingerprint: str, epochs: int, multirun: bool) -> ResumePlan:
    """Decide from `trainer.resume` and what `run_dir` already holds, reading only; raise one-line errors."""
    resume = cfg.trainer.resume
    if not resume:
        return _continue_existing(run_dir, fingerprint, epochs, strict=not multirun)
    if resume != "auto" and Path(resume).expanduser().is_file():
        if cfg.trainer.kfold:
            raise ConfigError(f"trainer.resume={resume}: a checkpoint file belongs to one fold; continue a "
                              "trainer.kfold run with trainer.resume=<its run directory> or auto")
        if holds_run_files(run_dir):
            raise RunDirectoryError(f"{run_dir} already holds a run; trainer.resume={resume} starts a new run "
                                    "from that checkpoint: give it a new directory (leave hydra.run.dir unset)")
        return ResumePlan(run_dir, checkpoint=Path(resume).expanduser())
    if multirun:
        raise ConfigError(f"trainer.resume={resume} continues one run in its own directory, not a sweep's jobs; "
                          "finish a sweep with sweep.resume=<sweep dir>")
    if resume == "auto":
        here, notes = recorded_status(run_dir)
        if here is not None and here.get("config_fingerprint") == fingerprint and has_checkpoint(run_dir):
            return _in_place(run_dir, epochs, here, notes)  # a fixed hydra.run.dir holding this run
        latest = find_latest_run(Path(cfg.output_root), fingerprint, exclude=run_dir)
        if latest is None:
            raise CheckpointError(f"trainer.resume=auto found no earlier run of this config with a checkpoint "
                                  f"under {cfg.output_root}; start one without trainer.resume")
        return _in_place(latest, epochs, *recorded_status(latest))
    target = _run_dir_of(Path(resume).expanduser(), resume)
    status, notes = recorded_status(target)
    _require_same_config(cfg, target, status, fingerprint, resume)
    return _in_place(target, epochs, status, notes)


def recorded_status(run_dir: Path) -> tuple[Optional[dict[str, Any]], dict[str, Any]]:
    """The status record of the run in `run_dir` (None: no run there) and notes on how it was obtained.

    A damaged status.json, or a missing one beside the run's checkpoints or attempts.jsonl, is rebuilt
    from attempts.jsonl and the config the checkpoint holds; RunDirectoryError when nothing says which run it is.
    """
    damage = status_damage(run_dir)
    status = read_status(run_dir) if damage is None else None
    if status is not None:
        return status, {}
    if damage is None and not holds_run_files(run_dir):
        return None, {}
    what = f"{run_dir / STATUS_FILE} is {damage}" if damage else f"{run_dir} has no {STATUS_FILE}"
    paths = checkpoint_paths(run_dir)
    fingerprint = config_fingerprint(OmegaConf.create(read_saved_config(paths[0])[0])) if paths else None
    rebuilt = rebuilt_status(run_dir, fingerprint)
    if rebuilt is None:
        raise RunDirectoryError(f"{what}, and neither a checkpoint nor attempts.jsonl says which run this is; "
                                "nothing was changed: repair or remove that file, or use another directory")
    sources = " and ".join(([str(paths[0].relative_to(run_dir))] if paths else []) +
                           (["attempts.jsonl"] if rebuilt["attempts"] else []))
    log.warning("%s: rebuilt the run's status from %s", what, sources)
    return rebuilt, {"rebuilt_status": f"{what}; rebuilt from {sources}", "damaged": damage is not None}


def continue_command(run_dir: Path) -> str:
    """How to continue an interrupted run (in a sweep: how to finish the sweep), for the log."""
    if not HydraConfig.initialized():
        return f"trainer.resume={run_dir}"
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"the same dlrun -m command with sweep.resume={hydra_cfg.sweep.dir}"
    kept = [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith("trainer.resume=")]
    return " ".join(["dlrun", *kept, f"trainer.resume={run_dir}"])


def _continue_existing(run_dir: Path, fingerprint: str, epochs: int, strict: bool) -> ResumePlan:
    """trainer.resume=null: a fresh directory starts fresh; one holding this config's run continues it."""
    status, notes = recorded_status(run_dir)
    if status is None:
        return ResumePlan(run_dir)
    recorded = status.get("config_fingerprint")
    if recorded != fingerprint:
        if strict and recorded is not None:  # a single run would overwrite another experiment
            raise ConfigError(f"{run_dir} already holds a run of another config; nothing was changed: continue "
                              "that run with its own overrides, or give this one another directory (hydra.run.dir)")
        # A sweep job whose config changed (sweep.resume), or a directory that holds only a refusal.
        return ResumePlan(run_dir, set_aside=recorded is not None, notes=notes)
    if has_checkpoint(run_dir):
        return _in_place(run_dir, epochs, status, notes)
    _require_not_running(run_dir, status)
    return ResumePlan(run_dir, clear=True, previous=status, notes=notes)


def _in_place(run_dir: Path, epochs: int, status: Optional[dict[str, Any]], notes: dict[str, Any]) -> ResumePlan:
    """Continue `run_dir` from its most advanced checkpoint (or report it done).

    That is last.pt, or best.pt when it is further on (a save cut short between the two, a disk that
    filled up at last.pt): both hold the whole training state of an epoch end. Every checkpoint must
    be readable and of the config status.json records.
    """
    status = status or {}
    _require_not_running(run_dir, status)
    done = completed_summary(run_dir, status, epochs)
    if done is not None:
        return ResumePlan(run_dir, in_place=True, done=done)
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise CheckpointError(f"{run_dir} has no checkpoint to continue from (no {run_dir / 'checkpoints' / LAST})")
    progress = {}
    for path in paths:
        config, progress[path] = read_saved_config(path)
        if status.get("config_fingerprint") not in (None, config_fingerprint(OmegaConf.create(config))):
            raise RunDirectoryError(f"{path} holds another config than {run_dir / STATUS_FILE} records; "
                                    "nothing was changed: continue it with trainer.resume=<that file> in a new run")
    own = [path for path in paths if path.parent == run_dir / "checkpoints"]
    start = max(own, key=lambda path: (progress[path], path.name == LAST)) if own else None  # kfold: per fold
    return ResumePlan(run_dir, checkpoint=start, in_place=True, previous=status, notes=notes)


def _run_dir_of(path: Path, resume: str) -> Path:
    """The run directory `trainer.resume=<dir>` names (also accepting its checkpoints/ folder)."""
    if path.name == "checkpoints" and (path / LAST).is_file():
        path = path.parent
    if not path.is_dir() or not (has_checkpoint(path) or (path / STATUS_FILE).exists()):
        raise CheckpointError(f"trainer.resume={resume}: no checkpoint at {path / 'checkpoints' / LAST}")
    return path


def _require_same_config(cfg: DictConfig, target: Path, status: Optional[dict[str, Any]], fingerprint: str,
                         resume: str) -> None:
    """Continuing in place keeps the run one experiment: the configs may differ only in resume-insensitive keys."""
    recorded = (status or {}).get("config_fingerprint")
    if recorded == fingerprint:
        return
    last = target / "checkpoints" / LAST
    saved_config = read_saved_config(last)[0] if last.exists() else None
    differences = _differences(saved_config, OmegaConf.to_container(cfg, resolve=True)) if saved_config else []
    which = f" ({'; '.join(differences[:3])})" if differences else ""
    raise CheckpointError(f"trainer.resume={resume}: that run has another config{which}; continue it with the "
                          f"same overrides, or start a new run from its checkpoint with trainer.resume={last}")


def _require_not_running(run_dir: Path, status: dict[str, Any]) -> None:
    """A run whose status.json names a live process (written by a dlrun without run locks) is not continued."""
    if status.get("status") == "running" and process_alive(status):
        raise RunDirectoryError(f"{run_dir} is still running (pid {status.get('pid')} on this host); "
                                "stop it first, or wait for it")


def _differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`key: saved → current` for each value that differs (resume-insensitive keys left out)."""
    before, after = _flatten(saved), _flatten(current)
    ignored = set(RESUME_INSENSITIVE_KEYS)
    return [f"{key}: {before.get(key)!r} → {after.get(key)!r}" for key in sorted(before.keys() | after.keys())
            if key not in ignored and not key.startswith("hydra.") and before.get(key) != after.get(key)]


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}"""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat
