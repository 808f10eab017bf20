"""Admitting an attempt into a run directory: plan, lock, plan again, and only then write.

`start_attempt` decides what the attempt does (dlrun.run.resume.plan_resume, which only reads),
takes the lock of the directory it will write (dlrun.run.lock), plans again under the lock (no
one changes the directory now) and readies it: an earlier attempt's outputs cleared when it
starts over, a run of another config moved into `earlier/<n>/`, a damaged status.json kept
beside the rebuilt one, status.json `running`, the held .hydra/ files and log written
(dlrun.run.job_files), temporary files a killed save left removed.

A refused attempt (a planning error, a directory in use or not writable) leaves an existing run
byte for byte as it was; `record_refusal` says why only in this attempt's own empty directory
(Hydra made it; a sweep's leaderboard reads it). Hydra's fresh directory is removed when the
attempt continues another run, so one run directory remains.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

from dlrun.atomic import remove_temporaries
from dlrun.config import validate
from dlrun.errors import DlrunError, RunDirectoryError
from dlrun.run import job_files
from dlrun.run.lock import RunLock
from dlrun.run.processes import environment_rank
from dlrun.run.run_dir import STATUS_FILE, clear_training_outputs, config_fingerprint, set_aside, written_folders
from dlrun.run.status import RunStatus
from dlrun.run.stop_signals import Interrupted

if TYPE_CHECKING:  # resume reads checkpoints (torch): imported when an attempt is planned, so that the CLI
    from dlrun.run.resume import ResumePlan  # can record a refused config before torch is imported

log = logging.getLogger("dlrun")


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


def check_before_imports(cfg: DictConfig, run_dir: Path) -> DictConfig:
    """Validate `cfg` before the training libraries (torch) are imported, so that a typo costs a fraction
    of a second; a refusal is recorded in `run_dir` as `attempt.begin` would. Returns the validated config
    (for `attempt.begin`, which then does not validate again)."""
    try:
        return validate(cfg)
    except DlrunError as error:
        if environment_rank() == 0:
            record_refusal(run_dir, error, cfg)
        raise


def _plan_under_lock(cfg: DictConfig, run_dir: Path, fingerprint: str, epochs: int,
                     multirun: bool) -> tuple[ResumePlan, RunLock]:
    """Plan, lock the planned directory, and plan again under the lock (no one changes it now)."""
    from dlrun.run.resume import plan_resume

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
        leftovers = [path for folder in written_folders(run_dir) for path in remove_temporaries(folder)]
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
