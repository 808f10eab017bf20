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

`start_attempt` plans, takes the run's lock (dlrun.run.lock), plans again under it, and only
then writes: a refused attempt leaves an existing run byte for byte as it was. Hydra's fresh
directory (`hydra.run.dir`) is removed when the attempt continues another run, and records a
refusal only when it is this attempt's own, empty directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dlrun.atomic import remove_temporaries
from dlrun.errors import CheckpointError, ConfigError, DlrunError, RunDirectoryError
from dlrun.run import job_files
from dlrun.run.checkpoint import LAST, read_saved_config
from dlrun.run.lock import RunLock
from dlrun.run.run_dir import (RESUME_INSENSITIVE_KEYS, STATUS_FILE, checkpoint_paths, clear_training_outputs,
                               completed_summary, config_fingerprint, find_latest_run, has_checkpoint,
                               holds_run_files, set_aside)
from dlrun.run.status import RunStatus, process_alive, read_status, rebuilt_status, status_damage
from dlrun.run.stop_signals import Interrupted

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


def start_attempt(cfg: DictConfig, run_dir: Path, epochs: int, multirun: bool, overrides: list[str],
                  job_cfg: Optional[DictConfig] = None) -> tuple[ResumePlan, Optional[RunStatus], Optional[RunLock]]:
    """Plan this attempt, lock the directory it writes and make it ready: its status.json `running`,
    .hydra/ and the log written (`job_cfg`: the config as Hydra passed it), an earlier attempt's outputs
    set aside if it starts over. No status and no lock when the run is already complete.

    A refusal (a planning error, a directory in use) writes nothing into an existing run; it is
    recorded in `run_dir` only when that is this attempt's own empty directory. On several
    processes rank 0 alone calls this.
    """
    fingerprint = config_fingerprint(cfg)
    try:
        plan, lock = _plan_under_lock(cfg, run_dir, fingerprint, epochs, multirun)
    except DlrunError as error:
        record_refusal(run_dir, error, job_cfg)
        raise
    try:
        if plan.run_dir.resolve() != Path(run_dir).resolve():
            _remove_if_empty(run_dir)  # continuing another run directory: one run directory remains
        if plan.done is not None:
            lock.release()  # nothing to do: nothing is written
            return plan, None, None
        return plan, _ready(plan, fingerprint, overrides, lock, job_cfg), lock
    except BaseException:
        lock.release()
        raise


def record_refusal(run_dir: Path, error: BaseException, job_cfg: Optional[DictConfig] = None) -> None:
    """An attempt refused before training: say why in `run_dir` if it is this attempt's own, empty directory
    (Hydra made it; a sweep's leaderboard reads it). A directory holding anything is left as it is."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or any(run_dir.iterdir()):
        return
    try:
        lock = RunLock.acquire(run_dir)
    except DlrunError:
        return
    try:
        status = RunStatus(run_dir, fingerprint=None, when_full=lock.free_reserve)
        if isinstance(error, Interrupted):
            status.write("interrupted", error=str(error), exit_code=error.exit_code, signal=error.signal_name)
        else:
            status.write("failed", error=str(error), exit_code=getattr(error, "exit_code", 1))
        job_files.write_into(run_dir, job_cfg)
    except OSError as failure:  # e.g. a full disk: the console has the error
        log.warning("could not record the refusal in %s: %s", run_dir, failure)
    finally:
        lock.release()


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


def _plan_under_lock(cfg: DictConfig, run_dir: Path, fingerprint: str, epochs: int,
                     multirun: bool) -> tuple[ResumePlan, RunLock]:
    """Plan, lock the planned directory, and plan again under the lock (no one changes it now)."""
    for _ in range(3):
        plan = plan_resume(cfg, run_dir, fingerprint, epochs, multirun)
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock.acquire(plan.run_dir)
        try:
            again = plan_resume(cfg, run_dir, fingerprint, epochs, multirun)
        except BaseException:
            lock.release()
            raise
        if again.run_dir.resolve() == plan.run_dir.resolve():
            return again, lock
        lock.release()  # another run became the latest meanwhile: lock that one
    raise RunDirectoryError(f"the run to continue kept changing while {run_dir} was planned; try again")


def _ready(plan: ResumePlan, fingerprint: str, overrides: list[str], lock: RunLock,
           job_cfg: Optional[DictConfig]) -> RunStatus:
    """Under the lock: set aside what starts over, status.json `running`, then .hydra/ and the log."""
    run_dir = plan.run_dir
    previous = plan.previous
    if plan.notes.get("damaged"):
        kept = _keep_damaged_status(run_dir)
        plan.notes["rebuilt_status"] += f"; the damaged file is kept as {kept.name}"
    if plan.set_aside:
        moved = set_aside(run_dir)
        if moved is not None:
            plan.notes["set_aside"] = str(moved.relative_to(run_dir))
            log.info("%s held a run of another config: it is kept in %s", run_dir, moved)
    if plan.clear:
        clear_training_outputs(run_dir)
    status = RunStatus(run_dir, fingerprint, overrides, previous=previous, when_full=lock.free_reserve)
    for key, value in {**plan.notes, "took_over_lock": lock.taken_over}.items():
        if value and key != "damaged":
            status.note(key, value)
    if lock.taken_over:
        log.warning("%s: took over the lock of %s (%s)", run_dir, lock.taken_over.get("pid"), lock.taken_over["why"])
    status.write("running")
    try:
        job_files.write_into(run_dir, job_cfg)
        leftovers = [path for folder in (run_dir, run_dir / "checkpoints", *run_dir.glob("fold_*/checkpoints"))
                     for path in remove_temporaries(folder)]
        if leftovers:
            log.info("removed %d temporary file(s) an earlier attempt left, e.g. %s", len(leftovers), leftovers[0])
    except BaseException as error:
        status.ended_by(error)
        raise
    return status


def _keep_damaged_status(run_dir: Path) -> Path:
    """Rename the damaged status.json to status.damaged[-<n>].json: nothing written is lost."""
    for number in range(1, 1000):
        kept = run_dir / (f"status.damaged-{number}.json" if number > 1 else "status.damaged.json")
        if not kept.exists():
            os.replace(run_dir / STATUS_FILE, kept)
            return kept
    raise RunDirectoryError(f"{run_dir}: too many damaged status files kept")


def _remove_if_empty(fresh: Path) -> None:
    """Remove Hydra's fresh directory (and its date folder when that is left empty); never anything in use."""
    for leftover in (Path(fresh), Path(fresh).parent):
        try:
            leftover.rmdir()  # only when empty
        except OSError:
            break


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
    """Continue `run_dir` where its last checkpoint stands (or report it done)."""
    status = status or {}
    _require_not_running(run_dir, status)
    done = completed_summary(run_dir, status, epochs)
    if done is not None:
        return ResumePlan(run_dir, in_place=True, done=done)
    last = run_dir / "checkpoints" / LAST
    if not has_checkpoint(run_dir):
        raise CheckpointError(f"{run_dir} has no checkpoint to continue from (no {last})")
    for path in checkpoint_paths(run_dir):  # readable, and of the run status.json describes
        saved = config_fingerprint(OmegaConf.create(read_saved_config(path)[0]))
        if status.get("config_fingerprint") not in (None, saved):
            raise RunDirectoryError(f"{path} holds another config than {run_dir / STATUS_FILE} records; "
                                    "nothing was changed: continue it with trainer.resume=<that file> in a new run")
    return ResumePlan(run_dir, checkpoint=last if last.exists() else None, in_place=True, previous=status, notes=notes)


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
