"""A fused sweep group from its jobs to their finished run directories: build, stack, begin, resume.

`prepare_members(jobs)` then `train_members(members, stop)` is dlrun.train.run for a group of sweep
jobs that share one network:

1. `prepare_members`: each job's config is validated and built as a solo run builds it
   (`build_training`: its own validation split, initial weights, data order, optimizer, scheduler),
   members with the same seed share one copy of the data, and the members' models are stacked and
   checked against their own outputs. Nothing is written yet: a group that cannot be fused raises
   `Unfusable` (or the build's own error) and its jobs run one by one instead.
2. Each member begins its attempt (dlrun.run.attempt: its status.json, or `skipped` when its
   directory holds a completed run of its config) and continues from its last.pt when it has one.
3. Members at the same point (all of them, unless an earlier group was cut short unevenly) train
   together: dlrun.run.fused_fit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import torch
from omegaconf import OmegaConf

from dlrun.config import validate
from dlrun.data.build import Data, loading_once
from dlrun.data.card import write_card
from dlrun.data.loader import TensorLoader
from dlrun.engine.compiling import CompileSwitch, Decision
from dlrun.engine.device import describe_threads
from dlrun.engine.fused.layers import Unfusable
from dlrun.engine.fused.objectives import MemberObjective
from dlrun.engine.setup import build_training
from dlrun.errors import DlrunError
from dlrun.models.summary import summarize_model
from dlrun.report import hparams
from dlrun.report.console import Console
from dlrun.report.metrics_log import MetricsLog
from dlrun.run import attempt as attempts
from dlrun.run import checkpoint
from dlrun.run.admission import record_refusal
from dlrun.run.attempt import planned_epochs
from dlrun.run.fused_fit import run_together, stack
from dlrun.run.fused_jobs import MemberJob
from dlrun.run.fused_members import FAILED, SKIPPED, STOPPED, Member
from dlrun.run.stop_signals import StopSignals

log = logging.getLogger("dlrun")
SPLITS = ("train", "val", "test")


def train_members(members: Sequence[Member], stop: StopSignals) -> None:
    """Begin every member's attempt, then train and test them together (each ends with its outcome and best value)."""
    started = [member for member in members if begin(member, stop)]
    for point in resume_points(started):
        run_together(point, stop)


def prepare_members(jobs: Sequence[MemberJob]) -> list[Member]:
    """Every job's training objects, built as its solo run builds them; Unfusable when they cannot stack."""
    members: list[Member] = []
    data_copies: dict[str, Data] = {}
    with loading_once():  # each distinct dataset read once; each member splits and shuffles its own way
        for job in jobs:
            with job.current():
                cfg = job.cfg if job.cfg is not None else validate(job.task_cfg)
                training = build_training(cfg, planned_epochs(cfg), job_num=jobs[0].number)
            # The data depends on the seed and the dataset's own keys (dataset.seed may be set apart from seed).
            data_key = json.dumps([cfg.seed, OmegaConf.to_container(cfg.dataset, resolve=True)], sort_keys=True,
                                  default=str)
            share_data(training.data, data_copies.setdefault(data_key, training.data))
            if isinstance(training.net, CompileSwitch):  # summary.json says why nothing was compiled
                training.net.decision = Decision(False, "fused sweep: the group trains as one stacked model, eagerly")
            members.append(Member(job, cfg, training, slot=len(members)))
    MemberObjective([member.training.trainer.task for member in members])  # raises for a task it does not fuse
    stack(members).verify([member.training.model for member in members], example_batch(members[0]))
    return members


def share_data(own: Data, shared: Data) -> None:
    """Give a member the data copy of the first member with its seed and dataset (the same splits, drawn alike);
    each keeps its own loaders, so each draws its batch order from its own shuffling generator."""
    for name in SPLITS:
        loader, other = getattr(own, name), getattr(shared, name)
        if not isinstance(loader, TensorLoader) or loader.streams or loader.pair_transform is not None:
            raise Unfusable("only in-memory datasets in shuffled batches are fused (not image folders or sequences)")
        if len(loader.split) != len(other.split) or loader.batch_size != other.batch_size:
            raise Unfusable(f"the jobs' {name} splits differ in size")
        loader.split = other.split


def example_batch(member: Member, size: int = 4) -> torch.Tensor:
    """A few test examples as the model sees them (no augmentation: no random numbers drawn)."""
    loader = member.training.data.test
    inputs = loader.split.inputs[:size]
    return loader.transform(inputs) if loader.transform is not None else inputs


def begin(member: Member, stop: StopSignals) -> bool:
    """Begin the member's attempt and ready its directory; whether it has anything to train or test."""
    job = member.job
    try:
        with job.current():
            # job.task_cfg as Hydra passed it (its .hydra/ files); member.cfg, validated when the jobs were grouped
            member.attempt = attempts.begin(job.task_cfg, job.run_dir, stop, validated=member.cfg)
            done = member.attempt.done
            if done is not None:
                member.outcome = SKIPPED
                member.best_value = float("nan") if done.get("best_value") is None else float(done["best_value"])
                return False
            start(member)
    except Exception as error:  # its own bad input (a checkpoint that does not fit), or worse: the others go on
        log.error("job %d: %s", job.number, error if isinstance(error, DlrunError) else f"{type(error).__name__}: {error}")
        if member.attempt is None:  # refused before it had a status.json: say why in its own empty directory
            with job.current():
                record_refusal(job.run_dir, error, job.task_cfg)
        member.end(FAILED, error)
        return False
    return True


def start(member: Member) -> None:
    """The log's start, data.json, model_summary.txt, the metrics log; continue from last.pt when the plan says so."""
    training, plan = member.training, member.attempt.plan
    member.say("config: %s", " ".join(f"{group}={option}" for group, option in hparams.group_choices().items()))
    member.say("changed: %s", " ".join(hparams.overrides()))
    member.say("device: %s, %s; trained as one member of a stacked model", training.device, describe_threads())
    write_card(member.run_dir, member.cfg, training.data.task, training.data.extras)
    if plan.checkpoint is not None:
        resume(member, plan.checkpoint)
    member.model_summary = summarize_model(training.model, training.data.test.example_input())
    with open(member.run_dir / "model_summary.txt", "w") as handle:
        Console(width=120, file=handle).print(member.model_summary.table())
    progress = member.progress
    continue_from = (progress.epoch, progress.metrics_lines) if plan.in_place and plan.checkpoint else None
    member.metrics_log = MetricsLog(member.run_dir, overlay=("loss", training.trainer.task.metric),
                                    continue_from=continue_from)
    if progress.epoch >= training.trainer.epochs or progress.stopped_early is not None:
        member.say("nothing left to train: the checkpoint is at epoch %d of %d; testing it",
                   progress.epoch, training.trainer.epochs)
        member.outcome = STOPPED


def resume(member: Member, source: Path) -> None:
    """Load `source` into the member's training objects (and RNG states); its position checked against its data."""
    member.progress = checkpoint.restore_training_state(source, member.training, member.checkpoints)
    position = member.progress.position
    if position is not None:
        train = member.training.data.train
        position.check_fits(len(train), len(train.split), train.shuffle, source)
    where = member.progress.resume_point()
    member.say("resuming from %s (%s)", source, where["position"])
    member.attempt.status.continuing_from({"checkpoint": str(source), **where})


def resume_points(members: Sequence[Member]) -> list[list[Member]]:
    """The members that train from the same point (epoch and step), group by group; members with nothing
    left to train join the first group to be tested."""
    points: dict[tuple[int, int], list[Member]] = {}
    for member in members:
        if member.trains:
            where = member.progress.resume_point()
            points.setdefault((where["epoch"], where["step"]), []).append(member)
    groups = list(points.values())
    waiting = [member for member in members if member.outcome == STOPPED]
    if groups:
        groups[0].extend(waiting)
    elif waiting:
        groups.append(waiting)
    if len(groups) > 1:
        log.info("fused: the group continues from %d different points, one after another", len(groups))
    return groups

