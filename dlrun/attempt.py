"""One attempt at a run, around the training itself: which directory it writes, on how many
processes, and how it ends in status.json.

dlrun.train.run calls `run_attempt` with its `train` function. On several processes (torchrun,
a submitit job) every process calls it: the process group is joined (dlrun.processes), rank 0
plans the attempt and readies the run directory (dlrun.resume.start_attempt) and tells the
others; a failure is recorded in status.json by whichever process knows it, and a failure that
not all processes met tears the group down and raises `errors.OutOfStep`, so that the
others fail at their next exchange instead of waiting.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dlrun import distributed, hparams, processes
from dlrun.distributed import Ranks
from dlrun.errors import DlrunError, OutOfStep
from dlrun.kfold import train_folds
from dlrun.preemption import Interrupted, StopSignals
from dlrun.resume import ResumePlan, continue_command, record_early_failure, start_attempt
from dlrun.rundir import RunStatus
from dlrun.schema import validate

log = logging.getLogger("dlrun")

TrainFn = Callable[..., dict[str, Any]]  # dlrun.train.train


def run_attempt(cfg: DictConfig, run_dir: Path, stop: StopSignals, train: TrainFn) -> tuple[dict[str, Any], Ranks]:
    """Validate `cfg`, join the run's processes, train (or skip a completed run); the summary and the ranks.

    `run_dir` is Hydra's directory for this attempt; the attempt may continue another run's
    directory instead (dlrun.resume). Errors are recorded in status.json and re-raised.
    """
    try:
        cfg = validate(cfg)
        ranks = processes.join(cfg.device)
        ranks.check(cfg)
    except DlrunError as error:
        if processes.environment_rank() == 0:
            record_early_failure(run_dir, error)
        raise
    status: Optional[RunStatus] = None  # rank 0's

    def prepare() -> ResumePlan:
        nonlocal status
        plan, status = start_attempt(cfg, run_dir, planned_epochs(cfg), in_multirun(), hparams.overrides())
        return plan

    plan = ranks.from_main(prepare)  # rank 0 readies the run directory before the others start
    run_dir = plan.run_dir
    if plan.done is not None:
        log.info("skipped: %s already completed %s epochs of this config", run_dir, plan.done.get("epochs_completed"))
        return plan.done, ranks
    try:
        if cfg.trainer.kfold:
            summary = train_folds(cfg, run_dir, planned_epochs(cfg), plan.in_place,
                                  partial(train, cfg, stop=stop, status=status, ranks=ranks), writes=ranks.is_main)
        else:
            summary = train(cfg, run_dir, resume_from=plan.checkpoint, in_place=plan.in_place, stop=stop,
                            status=status, ranks=ranks)
    except BaseException as error:
        stop.ignore_after_exit = ranks.distributed  # the run is over here: finish exiting whatever comes
        if status is not None:
            status.ended_by(error)
        elif not distributed.in_step(error):  # a failure of this process alone: rank 0 may never hear of it
            follower = RunStatus.of_attempt(run_dir, ranks.rank)
            if follower is not None:
                follower.ended_by(error)
        if isinstance(error, Interrupted) and ranks.is_main:
            log.info("continue with: %s", continue_command(run_dir))
        if ranks.distributed and not distributed.in_step(error):
            processes.leave()  # the others fail at their next exchange instead of waiting for this process
            raise OutOfStep(error) from error
        raise
    if status is not None:
        status.write("completed")
    return summary, ranks


def planned_epochs(cfg: DictConfig) -> int:
    """trainer.epochs, capped by debug.max_epochs."""
    return min(cfg.trainer.epochs, cfg.debug.max_epochs or cfg.trainer.epochs)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
