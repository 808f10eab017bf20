"""Which run an attempt continues (`trainer.resume`), and continuing it in its own directory.

A run directory is one run from start to end: a resumed run goes on in it, appending to its
metrics.jsonl, its TensorBoard run and its dlrun.log, and status.json lists the attempts.

- `trainer.resume=null`: a fresh run, unless the run directory already holds a run of the same
  config (a requeued Slurm/submitit job, `sweep.resume`, a fixed `hydra.run.dir`): if it
  completed, there is nothing to do; if it is unfinished and has a checkpoint (interrupted, or
  `running` but its process is gone), it continues in place; if it failed or diverged, or never
  saved a checkpoint, it starts again from scratch.
- `trainer.resume=auto`: continue the latest run of this config under `output_root`, in place.
- `trainer.resume=<run dir>`: continue that run in place; its config must be this one (up to
  `rundir.RESUME_INSENSITIVE_KEYS`, so `trainer.epochs` may grow).
- `trainer.resume=<file.pt>`: a new run, in this attempt's own directory, that starts from that
  checkpoint (fine-tuning, branching off); its config may differ.

Hydra makes a fresh timestamped directory (with .hydra/ and the log file) before dlrun runs.
Continuing elsewhere, `move_into` moves those into the continued run (this attempt's .hydra/
files replace the earlier ones; the log handler appends to the run's dlrun.log) and removes
the fresh directory, so exactly one run directory remains.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun.errors import CheckpointError, ConfigError, DlrunError
from dlrun.run.checkpoint import LAST, load_checkpoint
from dlrun.run.run_dir import (RESUME_INSENSITIVE_KEYS, clear_training_outputs, completed_summary,
                               config_fingerprint, find_latest_run, has_checkpoint)
from dlrun.run.status import RunStatus, process_alive, read_status

log = logging.getLogger("dlrun")
FRESH_OUTCOMES = ("failed", "diverged")  # a run that ended so starts again from scratch


@dataclass
class ResumePlan:
    """What this attempt does."""

    run_dir: Path  # where it writes: this attempt's directory, or the run it continues
    checkpoint: Optional[Path] = None  # where training continues from; None: from scratch (or per fold)
    in_place: bool = False  # continuing run_dir's own history (metrics.jsonl, TensorBoard, attempts)
    done: Optional[dict[str, Any]] = None  # summary.json of a completed run of this config: nothing to do
    clear: bool = False  # remove an earlier attempt's training outputs before starting from scratch


def plan_resume(cfg: DictConfig, run_dir: Path, fingerprint: str, epochs: int, multirun: bool) -> ResumePlan:
    """Decide from `trainer.resume` and what `run_dir` already holds; raise one-line errors."""
    resume = cfg.trainer.resume
    existing = read_status(run_dir)
    if not resume:
        return _continue_existing(run_dir, fingerprint, epochs, existing, strict=not multirun)
    if resume != "auto" and Path(resume).expanduser().is_file():
        if cfg.trainer.kfold:
            raise ConfigError(f"trainer.resume={resume}: a checkpoint file belongs to one fold; continue a "
                              "trainer.kfold run with trainer.resume=<its run directory> or auto")
        return ResumePlan(run_dir, checkpoint=Path(resume).expanduser())
    if multirun:
        raise ConfigError(f"trainer.resume={resume} continues one run in its own directory, not a sweep's jobs; "
                          "finish a sweep with sweep.resume=<sweep dir>")
    if resume == "auto":
        if existing is not None and existing.get("config_fingerprint") == fingerprint and has_checkpoint(run_dir):
            return _in_place(run_dir, epochs)  # a fixed hydra.run.dir holding this run
        latest = find_latest_run(Path(cfg.output_root), fingerprint, exclude=run_dir)
        if latest is None:
            raise CheckpointError(f"trainer.resume=auto found no earlier run of this config with a checkpoint "
                                  f"under {cfg.output_root}; start one without trainer.resume")
        return _in_place(latest, epochs)
    target = _run_dir_of(Path(resume).expanduser(), resume)
    _require_same_config(cfg, target, fingerprint, resume)
    return _in_place(target, epochs)


def start_attempt(cfg: DictConfig, run_dir: Path, epochs: int, multirun: bool,
                  overrides: list[str]) -> tuple[ResumePlan, Optional[RunStatus]]:
    """Plan this attempt and make its run directory ready: moved into, cleared if it starts over, its
    status.json `running` (no status when the run is already complete). A planning error is recorded
    in `run_dir` (Hydra made it already) and raised. On several processes rank 0 alone calls this."""
    fingerprint = config_fingerprint(cfg)
    try:
        plan = plan_resume(cfg, run_dir, fingerprint, epochs, multirun)
    except DlrunError as error:
        record_early_failure(run_dir, error)
        raise
    move_into(run_dir, plan.run_dir)  # continuing another run directory: one run directory remains
    if plan.done is not None:
        return plan, None
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if plan.clear:
        clear_training_outputs(plan.run_dir)
    status = RunStatus(plan.run_dir, fingerprint, overrides)
    status.write("running")
    return plan, status


def record_early_failure(run_dir: Path, error: DlrunError) -> None:
    """A run that fails before training: Hydra made its directory already, so say there why nothing ran."""
    if run_dir.exists():
        RunStatus(run_dir, fingerprint=None).write("failed", error=str(error), exit_code=error.exit_code)


def move_into(fresh: Path, target: Path) -> None:
    """Move what Hydra wrote into `fresh` (.hydra/, the log file) into the run at `target`; remove `fresh`.

    The log file handlers pointing into `fresh` go on appending to the same file name in `target`.
    Anything else in `fresh` stays (and keeps the directory): nothing is deleted that dlrun did not move.
    """
    fresh, target = Path(fresh), Path(target)
    if not fresh.exists() or fresh.resolve() == target.resolve():
        return
    for source in sorted((fresh / ".hydra").glob("*")):
        (target / ".hydra").mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), str(target / ".hydra" / source.name))
    for handler in _file_handlers():
        old = Path(handler.baseFilename)
        if old.parent.resolve() == fresh.resolve():
            _repoint(handler, target / old.name)
    for leftover in (fresh / ".hydra", fresh, fresh.parent):
        try:
            leftover.rmdir()  # only when empty: Hydra's date folder goes with its last run
        except OSError:
            break


def continue_command(run_dir: Path) -> str:
    """How to continue an interrupted run (in a sweep: how to finish the sweep), for the log."""
    if not HydraConfig.initialized():
        return f"trainer.resume={run_dir}"
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        return f"the same dlrun -m command with sweep.resume={hydra_cfg.sweep.dir}"
    kept = [o for o in hydra_cfg.overrides.task if not o.lstrip("+~").startswith("trainer.resume=")]
    return " ".join(["dlrun", *kept, f"trainer.resume={run_dir}"])


def _continue_existing(run_dir: Path, fingerprint: str, epochs: int, existing: Optional[dict[str, Any]],
                       strict: bool) -> ResumePlan:
    """trainer.resume=null: a fresh directory starts fresh; one holding this config's run continues it."""
    if existing is None:
        fresh = not has_checkpoint(run_dir) and not (run_dir / "metrics.jsonl").exists()
        return ResumePlan(run_dir, clear=not fresh)
    recorded = existing.get("config_fingerprint")
    if recorded != fingerprint:
        if strict and recorded is not None:  # a single run would overwrite another experiment
            raise ConfigError(f"{run_dir} already holds a run of another config; choose another "
                              "hydra.run.dir, or continue that run with its own overrides")
        return ResumePlan(run_dir, clear=True)  # a sweep job whose config changed: run it again
    if existing.get("status") in FRESH_OUTCOMES or not has_checkpoint(run_dir):
        _require_not_running(run_dir, existing)
        return ResumePlan(run_dir, clear=True)
    return _in_place(run_dir, epochs)


def _in_place(run_dir: Path, epochs: int) -> ResumePlan:
    """Continue `run_dir` where its last checkpoint stands (or report it done)."""
    status = read_status(run_dir) or {}
    _require_not_running(run_dir, status)
    done = completed_summary(run_dir, status.get("config_fingerprint", ""), epochs)
    if done is not None:
        return ResumePlan(run_dir, in_place=True, done=done)
    last = run_dir / "checkpoints" / LAST
    if not has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} has no checkpoint to continue from (no {last})")
    return ResumePlan(run_dir, checkpoint=last if last.exists() else None, in_place=True)


def _run_dir_of(path: Path, resume: str) -> Path:
    """The run directory `trainer.resume=<dir>` names (also accepting its checkpoints/ folder)."""
    if path.name == "checkpoints" and (path / LAST).is_file():
        path = path.parent
    if not path.is_dir() or not (has_checkpoint(path) or (path / "status.json").exists()):
        raise CheckpointError(f"trainer.resume={resume}: no checkpoint at {path / 'checkpoints' / LAST}")
    return path


def _require_same_config(cfg: DictConfig, target: Path, fingerprint: str, resume: str) -> None:
    """Continuing in place keeps the run one experiment: the configs may differ only in resume-insensitive keys."""
    recorded = (read_status(target) or {}).get("config_fingerprint")
    if recorded == fingerprint:
        return
    last = target / "checkpoints" / LAST
    saved_config = load_checkpoint(last)["config"] if last.exists() else None  # read only on this rare path
    if recorded is None and saved_config is not None:  # no status.json: the checkpoint's config decides
        if config_fingerprint(OmegaConf.create(saved_config)) == fingerprint:
            return
    differences = _differences(saved_config, OmegaConf.to_container(cfg, resolve=True)) if saved_config else []
    which = f" ({'; '.join(differences[:3])})" if differences else ""
    raise CheckpointError(f"trainer.resume={resume}: that run has another config{which}; continue it with the "
                          f"same overrides, or start a new run from its checkpoint with trainer.resume={last}")


def _require_not_running(run_dir: Path, status: dict[str, Any]) -> None:
    if status.get("status") == "running" and process_alive(status):
        raise CheckpointError(f"{run_dir} is still running (pid {status.get('pid')} on this host); "
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


def _file_handlers() -> list[logging.FileHandler]:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers if isinstance(handler, logging.FileHandler)]


def _repoint(handler: logging.FileHandler, new_path: Path) -> None:
    """Append what the handler wrote so far to `new_path`, and write there from now on."""
    handler.acquire()
    try:
        handler.flush()
        old_path = Path(handler.baseFilename)
        written = old_path.read_text() if old_path.exists() else ""
        old_stream = handler.setStream(open(new_path, "a", encoding=handler.encoding or "utf-8"))
        handler.baseFilename = str(new_path.resolve())
        if old_stream is not None:
            old_stream.close()
        if written:
            handler.stream.write(written)
            handler.stream.flush()
        old_path.unlink(missing_ok=True)
    finally:
        handler.release()
