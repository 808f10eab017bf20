"""One attempt at a run, around the training itself: which directory it writes, on how many
processes, and how it ends in status.json.

`begin` validates the config, joins the run's processes (dlrun.run.processes) and, on rank 0,
plans the attempt, locks the run directory and readies it (dlrun.run.admission.start_attempt),
telling the others the plan. Nothing is written into an existing run before that: a refused
attempt leaves it as it was. `Attempt.recording` then wraps the training: its outcome goes into
status.json, written by whichever process knows it, and a failure that not all processes met
tears the group down and raises `errors.OutOfStep`, so that the others fail at their next
exchange instead of waiting. The lock is released when the attempt ends, however it ends.

A stop signal during start-up ends the attempt as interrupted, an existing run untouched (an
error met meanwhile is the signal's doing, not the config's); a storage failure (a full disk,
read-only storage) ends it as a `StorageError` naming the path.
"""

from __future__ import annotations

import errno
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dlrun.config import validate
from dlrun.engine.distributed import Ranks
from dlrun.errors import (ConfigError, DlrunError, OutOfStep, ReportedByMain, StorageError, TrainingDiverged,
                          find_cause)
from dlrun.report import hparams
from dlrun.run import processes
from dlrun.run.admission import record_refusal, start_attempt
from dlrun.run.lock import RunLock
from dlrun.run.resume import ResumePlan, continue_command
from dlrun.run.status import RunStatus
from dlrun.run.stop_signals import Interrupted, StopSignals

log = logging.getLogger("dlrun")
# What a full or failing storage asks of the user, by errno.
STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full: free space, then continue the run",
                  errno.EDQUOT: "the disk quota is used up: free space, then continue the run",
                  errno.EROFS: "read-only storage: continue the run where it can be written",
                  errno.EACCES: "no permission to write there", errno.EIO: "the storage failed (I/O error)"}


@dataclass
class Attempt:
    """What this attempt does: `cfg` (validated), the run's processes, the plan and rank 0's status.json."""

    cfg: DictConfig
    ranks: Ranks
    plan: ResumePlan
    status: Optional[RunStatus]  # rank 0's; None on the other processes and when the run is complete
    lock: Optional[RunLock] = None  # rank 0's hold on the run directory, until the attempt ends

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def done(self) -> Optional[dict[str, Any]]:
        """summary.json of a run of this config that completed already: nothing to train."""
        return self.plan.done

    @contextmanager
    def recording(self, stop: StopSignals) -> Iterator[None]:
        """Record how the training inside ends: completed, or the error (re-raised) in status.json."""
        try:
            try:
                yield
            except BaseException as raised:
                stop.ignore_after_exit = self.ranks.distributed  # the run is over here: finish exiting whatever comes
                error = storage_failure(raised, self.run_dir) or raised
                self._record_failure(error)
                if isinstance(error, (Interrupted, StorageError)) and self.ranks.is_main:
                    log.info("continue with: %s", continue_command(self.run_dir))
                if self.ranks.distributed and not in_step(error):
                    processes.leave()  # the others fail at their next exchange instead of waiting for this process
                    raise OutOfStep(error) from raised
                if error is raised:
                    raise
                raise error from raised
            if self.status is not None:
                self.status.write("completed")
        finally:
            if self.lock is not None:
                self.lock.release()

    def _record_failure(self, error: BaseException) -> None:
        """status.json says how the attempt ended; when even that cannot be written, the log says so."""
        try:
            if self.status is not None:
                self.status.ended_by(error)
            elif not in_step(error):  # a failure of this process alone: rank 0 may never hear of it
                follower = RunStatus.of_attempt(self.run_dir, self.ranks.rank)
                if follower is not None:
                    follower.ended_by(error)
        except OSError as failure:
            log.error("could not record how the attempt ended in %s: %s", self.run_dir, failure)


def begin(cfg: DictConfig, run_dir: Path, stop: StopSignals, validated: Optional[DictConfig] = None) -> Attempt:
    """Validate `cfg`, join the run's processes, plan the attempt, lock and ready its directory.

    `run_dir` is Hydra's directory for this attempt; the attempt may continue another run's
    directory instead (dlrun.run.resume). A refusal is recorded only in this attempt's own empty
    directory, never in an existing run, and re-raised; so is a stop signal received meanwhile.
    `validated` is `cfg` as dlrun.config.validate returns it, when the caller has validated it already
    (the CLI before importing torch, a fused sweep grouping its jobs): it is not validated twice.
    """
    job_cfg = cfg
    try:
        cfg = validated if validated is not None else validate(cfg)
        stop.raise_if_requested("during start-up, before training")
        ranks = processes.join(cfg.device)
        ranks.check(cfg)
    except (DlrunError, Interrupted) as error:
        reported = stop.interrupted_instead(error, "during start-up, before training")
        if processes.environment_rank() == 0:
            record_refusal(run_dir, reported, job_cfg)
        if reported is error:
            raise
        raise reported from error
    held: list[tuple[RunStatus, RunLock]] = []  # rank 0's, set while it prepares

    def prepare() -> ResumePlan:
        try:
            plan, started, lock = start_attempt(cfg, run_dir, planned_epochs(cfg), in_multirun(),
                                                hparams.overrides(), job_cfg)
        except (DlrunError, OSError) as error:
            reported = stop.interrupted_instead(error, "during start-up")
            reported = storage_failure(reported, run_dir) or reported
            if reported is error:
                raise
            raise reported from error
        if started is not None and lock is not None:
            held.append((started, lock))
        return plan

    plan = ranks.from_main(prepare)  # rank 0 readies the run directory before the others start
    if plan.done is not None:
        log.info("skipped: %s already completed %s epochs of this config", plan.run_dir,
                 plan.done.get("epochs_completed"))
    status, lock = held[0] if held else (None, None)
    return Attempt(cfg, ranks, plan, status, lock)


def planned_epochs(cfg: DictConfig) -> int:
    """trainer.epochs, capped by debug.max_epochs."""
    return min(cfg.trainer.epochs, cfg.debug.max_epochs or cfg.trainer.epochs)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_number() -> int:
    """This job's number in a multirun (0 for a single run): parallel jobs take the GPUs in turn."""
    return HydraConfig.get().job.num if in_multirun() else 0


def storage_failure(error: BaseException, run_dir: Path) -> Optional[StorageError]:
    """A StorageError naming the path when `error` comes from the storage (disk full, read-only, I/O), else None."""
    cause = find_cause(error, OSError)
    if isinstance(error, DlrunError) or cause is None or cause.errno not in STORAGE_ERRNOS:
        return None
    where = cause.filename or run_dir
    advice = STORAGE_ERRNOS[cause.errno]
    return StorageError(f"cannot write {where}: {cause.strerror} ({advice})")


def in_step(error: BaseException) -> bool:
    """Whether every process met this failure at the same point (so a sweep's next job can run on them all)."""
    return isinstance(error, (ConfigError, ReportedByMain, TrainingDiverged, Interrupted))
