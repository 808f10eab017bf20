"""One attempt at a run, around the training itself: which directory it writes, on how many
processes, and how it ends in status.json.

`begin` validates the config, joins the run's processes (dlrun.run.processes) and, on rank 0,
plans the attempt and readies the run directory (dlrun.run.resume.start_attempt), telling the
others the plan. `Attempt.recording` then wraps the training: its outcome goes into status.json,
written by whichever process knows it, and a failure that not all processes met tears the group
down and raises `errors.OutOfStep`, so that the others fail at their next exchange instead of
waiting.
"""

from __future__ import annotations

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
from dlrun.errors import ConfigError, DlrunError, OutOfStep, ReportedByMain, TrainingDiverged
from dlrun.report import hparams
from dlrun.run import processes
from dlrun.run.resume import ResumePlan, continue_command, record_early_failure, start_attempt
from dlrun.run.status import RunStatus
from dlrun.run.stop_signals import Interrupted, StopSignals

log = logging.getLogger("dlrun")


@dataclass
class Attempt:
    """What this attempt does: `cfg` (validated), the run's processes, the plan and rank 0's status.json."""

    cfg: DictConfig
    ranks: Ranks
    plan: ResumePlan
    status: Optional[RunStatus]  # rank 0's; None on the other processes and when the run is complete

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
            yield
        except BaseException as error:
            stop.ignore_after_exit = self.ranks.distributed  # the run is over here: finish exiting whatever comes
            self._record_failure(error)
            if isinstance(error, Interrupted) and self.ranks.is_main:
                log.info("continue with: %s", continue_command(self.run_dir))
            if self.ranks.distributed and not in_step(error):
                processes.leave()  # the others fail at their next exchange instead of waiting for this process
                raise OutOfStep(error) from error
            raise
        if self.status is not None:
            self.status.write("completed")

    def _record_failure(self, error: BaseException) -> None:
        if self.status is not None:
            self.status.ended_by(error)
        elif not in_step(error):  # a failure of this process alone: rank 0 may never hear of it
            follower = RunStatus.of_attempt(self.run_dir, self.ranks.rank)
            if follower is not None:
                follower.ended_by(error)


def begin(cfg: DictConfig, run_dir: Path) -> Attempt:
    """Validate `cfg`, join the run's processes, plan the attempt and ready its directory.

    `run_dir` is Hydra's directory for this attempt; the attempt may continue another run's
    directory instead (dlrun.run.resume). Errors are recorded in status.json and re-raised.
    """
    try:
        cfg = validate(cfg)
        ranks = processes.join(cfg.device)
        ranks.check(cfg)
    except DlrunError as error:
        if processes.environment_rank() == 0:
            record_early_failure(run_dir, error)
        raise
    status: list[RunStatus] = []  # rank 0's, set while it prepares

    def prepare() -> ResumePlan:
        plan, started = start_attempt(cfg, run_dir, planned_epochs(cfg), in_multirun(), hparams.overrides())
        status.extend([started] if started is not None else [])
        return plan

    plan = ranks.from_main(prepare)  # rank 0 readies the run directory before the others start
    if plan.done is not None:
        log.info("skipped: %s already completed %s epochs of this config", plan.run_dir,
                 plan.done.get("epochs_completed"))
    return Attempt(cfg, ranks, plan, status[0] if status else None)


def planned_epochs(cfg: DictConfig) -> int:
    """trainer.epochs, capped by debug.max_epochs."""
    return min(cfg.trainer.epochs, cfg.debug.max_epochs or cfg.trainer.epochs)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_number() -> int:
    """This job's number in a multirun (0 for a single run): parallel jobs take the GPUs in turn."""
    return HydraConfig.get().job.num if in_multirun() else 0


def in_step(error: BaseException) -> bool:
    """Whether every process met this failure at the same point (so a sweep's next job can run on them all)."""
    return isinstance(error, (ConfigError, ReportedByMain, TrainingDiverged, Interrupted))
