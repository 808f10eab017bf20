"""Members of a fused group that train from the same point: fit and test them as one stacked model.

`run_together` is dlrun.train.train for several members at once: the stacked model (whose tensors
the members' own parameters view from here on), the fused epochs of train → validate → log → save,
then the test split with each member's best weights, and each member's summary.json, curves.png,
HPARAMS record and status. Per member, as in its solo run: its own metrics and epoch lines, its
scheduler, its best epoch and best.pt, its early stopping; a member whose loss becomes non-finite
is marked diverged and masked while the others go on. A stop signal saves every member's position
(dlrun.run.fused_saving) and ends every member's attempt as interrupted; `sweep.resume` continues
them in place, together.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Sequence

from dlrun.engine.device import wants_channels_last
from dlrun.engine.fused.batches import MemberSplits
from dlrun.engine.fused.loop import FusedTrainer, GroupPosition, evaluate_members, train_fused_epoch
from dlrun.engine.fused.objectives import MemberObjective, member_penalty
from dlrun.engine.fused.optim import MemberSteps
from dlrun.engine.fused.stacking import StackedModel
from dlrun.engine.position import check_finite
from dlrun.errors import TrainingDiverged
from dlrun.report import console, hparams
from dlrun.run import checkpoint
from dlrun.run.fused_members import FAILED, STOPPED, Member
from dlrun.run.fused_saving import GroupSaves, diverge
from dlrun.run.resume import continue_command
from dlrun.run.run_dir import environment
from dlrun.run.run_summary import run_summary
from dlrun.run.save_points import SaveSchedule
from dlrun.run.stop_signals import StopSignals

log = logging.getLogger("dlrun")


def run_together(members: Sequence[Member], stop: StopSignals) -> None:
    """Fit and test `members` (all at the same point) as one stacked model; every member ends recorded."""
    for slot, member in enumerate(members):
        member.slot = slot
    try:
        trainer, splits, saves = assemble(members, stop)
        fit(trainer, splits, members, saves)
        test(trainer, splits, members, saves)
    except BaseException as error:
        if not isinstance(error, KeyboardInterrupt):  # logged while the members' log files still take the group's lines
            log.error("fused group failed: %s: %s", type(error).__name__, error, exc_info=error,
                      extra={"console": False})
        for member in members:
            if member.running:
                member.end(FAILED, error)  # status.json: interrupted, diverged or failed, as the error says
        if isinstance(error, KeyboardInterrupt):  # a stop signal: the sweep stops here
            log.info("continue with: %s", continue_command(members[0].run_dir))
            raise


def assemble(members: Sequence[Member], stop: StopSignals) -> tuple[FusedTrainer, dict[str, MemberSplits], GroupSaves]:
    """The stacked model (the members' parameters become views of it), the fused trainer, the members' data and saves."""
    stacked = stack(members)
    stacked.bind_members()
    first = members[0].training
    trainer = FusedTrainer(
        stacked, MemberObjective([m.training.trainer.task for m in members]),
        MemberSteps(stacked, [m.training.trainer.optimizer for m in members], [m.training.trainer.grad_clip for m in members]),
        first.trainer.precision, [m.training.trainer.scheduler for m in members], [m.trains for m in members],
        penalty=member_penalty(stacked, [m.cfg.regularization.l1 for m in members],
                               members[0].cfg.regularization.decay_bias_and_norm),
        epochs=first.trainer.epochs)
    splits = {name: MemberSplits([getattr(m.training.data, name) for m in members]) for name in ("train", "val", "test")}
    trainer_cfg = members[0].cfg.trainer
    saves = GroupSaves(members, SaveSchedule(trainer_cfg.save_every_steps, trainer_cfg.save_every_minutes), stop,
                       masked=lambda: trainer.set_active([m.trains for m in members]))
    started = time.perf_counter()
    for member in members:
        member.started = started
    log.info("fused: %d jobs as one stacked %s on %s (%s)", len(members), type(first.model).__name__, first.device,
             "one shared batch per step" if splits["train"].one_copy else "each seed its own data")
    return trainer, splits, saves


def stack(members: Sequence[Member]) -> StackedModel:
    """The members' models stacked (in `slot` order), in the memory format their solo runs would train in."""
    first = members[0]
    device_cfg = first.cfg.device
    channels_last = wants_channels_last(device_cfg.channels_last, first.training.model, first.training.device,
                                        device_cfg.amp)
    return StackedModel.build([member.training.model for member in members], channels_last)


def fit(trainer: FusedTrainer, splits: dict[str, MemberSplits], members: Sequence[Member], saves: GroupSaves) -> None:
    """Fused epochs of train → validate → log → save, until every member has stopped or the last epoch."""
    training = [m for m in members if m.trains]
    if not training:
        return
    first = training[0]
    epochs, device = first.training.trainer.epochs, first.training.device
    position = (GroupPosition.of_members([m.progress.position for m in members], device)
                if first.progress.position is not None else None)  # continuing inside an epoch
    global_step = first.progress.global_step
    for epoch in range(first.progress.epoch + 1, epochs + 1):
        if not any(m.trains for m in members):
            break
        position = position or GroupPosition.start(epoch, splits["train"], global_step, device)
        for member in members:
            member.progress.position = None
        saves.before_steps(position)
        sums = train_fused_epoch(trainer, splits["train"], position, on_step=saves.after_step)
        seconds = position.seconds_so_far()
        for member in members:
            if member.trains:
                try:
                    check_finite(position.member(member.slot))
                except TrainingDiverged as error:
                    diverge(member, error)
        trainer.set_active([m.trains for m in members])
        saves.start_validation(position)
        validating = len(splits["val"]) > 0
        val = (evaluate_members(trainer.stacked, splits["val"], trainer.objective, trainer.precision,
                                on_batch=saves.during_validation) if validating else [{}] * len(members))
        improved = {m.slot: record_epoch(m, epoch, sums[m.slot], val[m.slot], seconds, position.global_step)
                    for m in members if m.trains}
        for member in members:
            if member.trains and member.progress.stopped_early is not None:
                member.outcome = STOPPED  # saved below with the others that trained this epoch, then tested
        trainer.set_active([m.trains for m in members])
        log.info(group_line(epoch, epochs, members, seconds))
        saves.end_of_epoch(epoch, improved)  # last.pt (and best.pt); a pending stop signal stops here
        global_step, position = position.global_step, None


def record_epoch(member: Member, epoch: int, sums: list[float], val: dict[str, float], seconds: float,
                 global_step: int) -> bool:
    """A member's epoch: its metrics, scheduler step, log lines, best epoch and early stopping; whether it improved."""
    training = member.training
    task, optimizer, scheduler = training.trainer.task, training.trainer.optimizer, training.trainer.scheduler
    examples_per_sec = training.data.train.num_examples / seconds
    history = {**{f"train/{k}": v for k, v in task.metrics(sums).items()}, **{f"val/{k}": v for k, v in val.items()},
               "lr": optimizer.param_groups[0]["lr"], "examples_per_sec": examples_per_sec,
               **task.speed_metrics(examples_per_sec), "epoch_time_s": seconds}
    if scheduler is not None and scheduler.interval == "epoch":
        scheduler.step(history)
    member.metrics_log.write(epoch, history)
    member.say(console.epoch_line(epoch, training.trainer.epochs, history))
    improved = member.progress.record_epoch(epoch, history, global_step, training.monitor, task.mode)
    patience = member.cfg.regularization.early_stopping
    if patience > 0 and epoch - (member.progress.best_epoch or 0) >= patience:
        member.progress.stopped_early = epoch
        member.say("early stopping after epoch %d: %s has not improved for %d epochs (best: epoch %s)",
                   epoch, training.monitor, patience, member.progress.best_epoch)
    return improved


def test(trainer: FusedTrainer, splits: dict[str, MemberSplits], members: Sequence[Member], saves: GroupSaves) -> None:
    """The test split with each member's best weights (its last.pt's when no epoch improved); then its files."""
    testing = [m for m in members if m.running]
    if not testing:
        return
    for member in testing:
        best = member.checkpoints / checkpoint.BEST
        source = best if best.exists() else member.checkpoints / checkpoint.LAST
        if source.exists():  # into the stacked tensors, through the member's own views
            member.training.model.load_state_dict(checkpoint.load_checkpoint(source, member.training.device)["model"])
    metrics = evaluate_members(trainer.stacked, splits["test"], trainer.objective, trainer.precision,
                               on_batch=saves.during_test)
    ended = time.perf_counter()  # every member trained and was tested for the same time: the group's
    shared = environment()
    for member in testing:
        finish(member, {f"test/{name}": value for name, value in metrics[member.slot].items()},
               member.progress.elapsed_s + ended - member.started, len(members), shared)


def finish(member: Member, test_metrics: dict[str, float], duration: float, group_size: int,
           run_environment: dict[str, Any]) -> None:
    """The member's results: the task's own final evaluation, the HPARAMS record, summary.json, curves.png."""
    training, progress = member.training, member.progress
    test_metrics.update(training.trainer.task.after_test(training.model, member.run_dir))
    best = math.nan if progress.best_value is None else progress.best_value
    results = {**test_metrics, training.monitor.replace("/", "/best_"): best, "run/epochs": progress.epoch,
               "run/duration_s": duration}
    member.metrics_log.write(progress.epoch, results)
    with member.job.current():  # HPARAMS: this job's group choices and overrides
        hparams.write_hparams(member.metrics_log.writer, hparams.run_hparams(member.cfg), results)
    summary = run_summary(member.cfg, training, progress, test_metrics, results["run/duration_s"], member.model_summary,
                          run_environment)
    summary["fused"] = {"group_size": group_size}  # trained as one of this many members of a stacked model
    member.complete(summary)
    member.say("run directory: %s", member.run_dir)
    member.say("job %d: completed, best %s %.4f, %s", member.number, training.monitor, best,
               "  ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()), console=True)


def group_line(epoch: int, epochs: int, members: Sequence[Member], seconds: float) -> str:
    """One console line per fused epoch: how many members train, and the best monitored value so far."""
    monitor = members[0].training.monitor
    best = [m for m in members if m.progress.best_value is not None]
    leader = (max if members[0].training.trainer.task.mode == "max" else min)(
        best, key=lambda m: m.progress.best_value) if best else None
    states = {outcome: sum(m.outcome == outcome for m in members) for outcome in {m.outcome for m in members}}
    return (f"epoch {epoch}/{epochs} ({seconds:.2f}s): " + ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
            + (f"; best {monitor} {leader.progress.best_value:.4f} (job {leader.number})" if leader else ""))
