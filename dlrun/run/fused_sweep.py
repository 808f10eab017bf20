"""`hydra/launcher=fused`: the jobs of a sweep that share one network train as one stacked model.

`launch` is what the launcher plugin (hydra_plugins/dlrun_fused_launcher) calls with the sweep's
jobs. It composes every job's config as Hydra's basic launcher does, groups the jobs
(dlrun.run.fused_groups), splits a group larger than `hydra.launcher.max_members`, and runs the
groups one after another in this process: a group of two or more jobs through
dlrun.run.fused_train, each member writing its own job directory as a solo job would; a job that
no other job can join, a group that cannot be fused (the log says why) and a job with an invalid
config through Hydra's own `run_job`, exactly as the basic launcher runs it. Each job returns what
dlrun's task returns: its best validation value (NaN if it did not complete).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from hydra.core.utils import JobReturn, configure_log, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from dlrun.config import validate
from dlrun.engine.device import select_device
from dlrun.engine.fused.capacity import members_that_fit
from dlrun.errors import ConfigError, DlrunError
from dlrun.models import build_model
from dlrun.models.summary import summarize_model
from dlrun.run.fused_groups import differing_keys, group_jobs, group_key, solo_reason
from dlrun.run.fused_jobs import MemberJob, MemberLogs
from dlrun.run.fused_train import prepare_members, train_members
from dlrun.run.stop_signals import StopSignals

log = logging.getLogger("dlrun")
ALONE = "no other job shares its network"  # a group of one: run as the basic launcher runs it, without a word


class FusedSweep:
    """One launch of the fused launcher: the sweep's config, Hydra's context and the task function."""

    def __init__(self, config: DictConfig, hydra_context: HydraContext, task_function: TaskFunction,
                 max_members: Optional[int]) -> None:
        if max_members is not None and max_members < 1:
            raise ConfigError(f"hydra.launcher.max_members must be at least 1 (or null: as many as fit), "
                              f"got {max_members}")
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function
        self.max_members = max_members

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
        setup_globals()
        self._hydra_logging()
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [MemberJob.compose(self.hydra_context, self.config, overrides, initial_job_idx + index)
                for index, overrides in enumerate(job_overrides)]
        log.info("fused launcher: %d jobs", len(jobs))
        returns: dict[int, JobReturn] = {}
        for group, reason in self.plan(jobs):
            if reason is None:
                returns.update(self.run_fused(group))
            else:
                if reason != ALONE:
                    log.info("fused launcher: %s run one by one: %s", _numbers(group), reason)
                returns.update(self.run_solo(group))
        return [returns[job.number] for job in jobs]

    def plan(self, jobs: Sequence[MemberJob]) -> list[tuple[list[MemberJob], Optional[str]]]:
        """The groups in order of their first job, each with the reason it runs job by job (None: fused)."""
        keys, reasons = [], {}
        for job in jobs:
            try:
                job.cfg = cfg = validate(job.task_cfg)
            except DlrunError:  # reported as the basic launcher reports it, by the job itself
                keys.append(("invalid", job.number))
                reasons[job.number] = "its config is invalid"
                continue
            keys.append(group_key(cfg))
            reason = solo_reason(cfg)
            if reason is not None:
                reasons[job.number] = reason
        planned: list[tuple[list[MemberJob], Optional[str]]] = []
        for indices in group_jobs(keys):
            group = [jobs[index] for index in indices]
            reason = reasons.get(group[0].number) or (None if len(group) > 1 else ALONE)
            planned.extend((chunk, reason) for chunk in (self.chunks(group) if reason is None else [group]))
        return planned

    def chunks(self, group: list[MemberJob]) -> list[list[MemberJob]]:
        """`group` cut into stacked models of at most max_members jobs (default: as many as fit in memory)."""
        size = self.max_members or _members_that_fit(group[0])
        if len(group) > size:
            log.info("fused launcher: %s: %d jobs per stacked model (hydra.launcher.max_members%s)",
                     _numbers(group), size, "" if self.max_members else ": as many as fit in memory")
        return [group[start:start + size] for start in range(0, len(group), size)]

    def run_fused(self, group: list[MemberJob]) -> dict[int, JobReturn]:
        differ = differing_keys([job.task_cfg for job in group])
        log.info("fused launcher: %s as one stacked model (they differ in %s)", _numbers(group),
                 ", ".join(differ) or "nothing")
        callbacks = self.hydra_context.callbacks
        returns: dict[int, JobReturn] = {}
        try:
            with MemberLogs(group), StopSignals() as stop:
                try:
                    members = prepare_members(group)
                except Exception as error:  # Unfusable, or the build's own error: no status or checkpoint written yet
                    unfused = str(error) if isinstance(error, DlrunError) else f"{type(error).__name__}: {error}"
                    log.info("fused launcher: %s run one by one: %s", _numbers(group), unfused.splitlines()[0])
                    members = None
                if members is not None:
                    for job in group:  # what Hydra's run_job does before it calls the task
                        job.make_dir()
                        callbacks.on_job_start(config=job.config, task_function=self.task_function)
                    train_members(members, stop)
                    for member in members:
                        returns[member.number] = member.job.job_return(member.best_value)
                        callbacks.on_job_end(config=member.job.config, job_return=returns[member.number])
        finally:
            self._hydra_logging()
        return returns if members is not None else self.run_solo(group)

    def run_solo(self, group: Sequence[MemberJob]) -> dict[int, JobReturn]:
        """Each job through Hydra's run_job, as the basic launcher runs it."""
        returns = {}
        for job in group:
            returns[job.number] = run_job(hydra_context=self.hydra_context, task_function=self.task_function,
                                          config=job.config, job_dir_key="hydra.sweep.dir",
                                          job_subdir_key="hydra.sweep.subdir")
            self._hydra_logging()
        return returns

    def _hydra_logging(self) -> None:
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)


def _members_that_fit(job: MemberJob) -> int:
    """hydra.launcher.max_members' default: stacked members of this job's model that fit in half the free memory."""
    cfg = job.cfg
    model = build_model(cfg.model, cfg.regularization.dropout)
    summary = summarize_model(model, torch.zeros(1, *cfg.dataset.input_shape))
    return members_that_fit(summary, cfg.trainer.batch_size, select_device(cfg.device.type))


def _numbers(group: Sequence[MemberJob]) -> str:
    numbers = [job.number for job in group]
    if len(numbers) > 2 and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"jobs {numbers[0]}-{numbers[-1]}"
    return ("job " if len(numbers) == 1 else "jobs ") + ",".join(map(str, numbers))
