"""The training run: build everything from the config, then epochs of train → validate → checkpoint.

`run(cfg)` is what the CLI calls and what tests call with a config from Hydra's compose API.
Which run an attempt continues is dlrun.resume's; when last.pt is written (epoch ends, a
schedule inside epochs, stop signals) is dlrun.saving's; signals themselves dlrun.preemption's;
one run on several processes (torchrun, Slurm) dlrun.distributed's: there `ranks` shares out
the batches, adds up the metrics, and rank 0 alone writes the run directory.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch import nn

from dlrun import checkpoint, hparams, logs
from dlrun.attempt import in_multirun, planned_epochs, run_attempt
from dlrun.checkpoint import EpochPosition
from dlrun.compiling import CompileSwitch, compile_report, compile_seconds, sync_clock
from dlrun.curves import write_run_curves
from dlrun.data import Loader, build_data
from dlrun.data.card import write_card
from dlrun.device import configure_backends, prepare_model, select_device
from dlrun.distributed import Ranks
from dlrun.grad_norms import GradNorms
from dlrun.models import build_model
from dlrun.models.summary import summarize
from dlrun.optim import build_l1_penalty, build_optimizer
from dlrun.precision import Precision
from dlrun.preemption import StopSignals
from dlrun.rundir import SUMMARY_FILE, RunStatus, environment, write_json
from dlrun.saving import Checkpointer, SaveSchedule, check_finite
from dlrun.schedulers import Scheduler, build_scheduler
from dlrun.tasks import Task, build_task

log = logging.getLogger("dlrun")


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Validate `cfg`, train (or continue a run), test on the best checkpoint; return what summary.json holds.

    `run_dir` defaults to Hydra's output directory; continuing a run happens in that run's own
    directory instead (dlrun.resume). status.json tracks the outcome and the attempts; a
    failure is recorded there and re-raised for the caller. A stop signal ends the run after
    saving where it stands, with `preemption.Interrupted` (exit code 128 + the signal).

    On several processes every one of them calls it: rank 0 picks and writes the run directory
    (the others' `run_dir` is not used), and they stop together. A failure that not all of them
    met raises `errors.OutOfStep`, which ends the process (and a sweep).
    """
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(cfg)
    with StopSignals() as stop:
        summary, ranks = run_attempt(cfg, run_dir, stop, train)
        signum = ranks.agree_now(stop.signum)
        if signum:  # too late to stop this run, but a sweep stops before its next job
            stop.adopt(signum)
            raise stop.interrupted(f"{stop.name} received as the run ended; the run is complete")
        return summary


def train(cfg: DictConfig, run_dir: Path, fold: Optional[int] = None, resume_from: Optional[Path] = None,
          in_place: bool = False, stop: Optional[StopSignals] = None,
          status: Optional[RunStatus] = None, ranks: Ranks = Ranks()) -> dict[str, Any]:
    """One training run in `run_dir`; with `fold`, validation is that fold of trainer.kfold (see dlrun.kfold).

    `resume_from` is a checkpoint to continue from; `in_place` says it belongs to this run, whose
    metrics.jsonl lines and TensorBoard steps after it are then dropped. `stop` is polled for stop
    signals (never, when None); `status` records where this attempt started. `ranks`: the
    processes of the run (one by default); only rank 0 writes into `run_dir`.
    """
    started = time.perf_counter()
    stop = stop if stop is not None else StopSignals()  # not entered: never requested
    device = select_device(cfg.device.type, job_num=HydraConfig.get().job.num if in_multirun() else 0,
                           local_rank=ranks.local_rank if ranks.distributed else None)
    configure_backends(cfg.device, processes_here=ranks.local_world)
    precision = Precision(cfg.device.amp, device)
    seed_everything(cfg.seed)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)

    data = build_data(cfg, device, shuffle_generator, fold=fold, shard=ranks.shard)
    regularization = cfg.regularization
    task = build_task(cfg, data)
    if ranks.is_main:
        write_card(run_dir, cfg, data.task, data.extras)  # data.json: what evaluation, prediction and export read
    model = ranks.convert_batchnorm(build_model(cfg.model, regularization.dropout), cfg.device.sync_batchnorm)
    model = model.to(device)
    net = prepare_model(model, cfg.device)  # what runs forward; `model` holds the weights we save
    epochs = planned_epochs(cfg)
    # With no validation split (dataset.val_fraction=0, e.g. d2l's 20-example weight-decay demo)
    # the training metric picks the best epoch and drives early stopping and plateau schedules.
    validating = len(data.val) > 0
    monitor = f"{'val' if validating else 'train'}/{task.metric}"
    optimizer = build_optimizer(cfg.optimizer, model, regularization)
    scheduler = build_scheduler(cfg.scheduler, optimizer, epochs, len(data.train), monitor, task.mode)
    grad_clip = task.default_grad_clip if regularization.grad_clip is None else regularization.grad_clip
    penalty = build_l1_penalty(model, regularization.l1, regularization.decay_bias_and_norm)
    grad_norms = GradNorms(model, precision) if cfg.trainer.log_grad_norms else None
    checkpoints = run_dir / "checkpoints"
    objects = checkpoint.TrainingObjects(model, optimizer, scheduler, precision, shuffle_generator)
    progress = checkpoint.Progress()

    if resume_from is not None:
        progress = checkpoint.restore_training_state(resume_from, objects, device, checkpoints, ranks.rank)
        if progress.position is not None:
            progress.position.check_fits(len(data.train), len(data.train.split), data.train.shuffle, resume_from)
            progress.position = ranks.take_share(progress.position)
        where = progress.resume_point()
        log.info("resuming from %s (%s)", resume_from, where["position"])
        if status is not None:
            status.continuing_from({"checkpoint": str(resume_from), **where})
        if progress.epoch >= epochs or progress.stopped_early is not None:
            log.info("nothing left to train: the checkpoint is at epoch %d of %d; testing it", progress.epoch, epochs)
    if resume_from is None or not progress.own_rng_restored:
        ranks.seed_own_streams(cfg.seed, progress.global_step)  # dropout of its own on each process
    train_net = ranks.wrap(net, device)  # DDP on several processes: gradients averaged in backward

    # An example from the test loader: it is not augmented, so no random numbers are drawn
    # here (an exact resume depends on the RNG streams being untouched).
    summary = summarize(model, data.test.example_input())
    if ranks.is_main:
        _save_model_summary(run_dir, summary)
    processes = f", {ranks.world} processes of batch {cfg.trainer.batch_size // ranks.world}" if ranks.distributed else ""
    device_line = f"{device}, {torch.get_num_threads()} CPU threads{processes}"
    logs.show_start(hparams.group_choices(), hparams.overrides(), device_line, summary.table())

    continue_from = (progress.epoch, progress.metrics_lines) if in_place and resume_from is not None else None
    metrics_log = (logs.MetricsLog(run_dir, overlay=("loss", task.metric), continue_from=continue_from)
                   if ranks.is_main else logs.NoMetricsLog())
    with metrics_log:

        def snapshot(position: Optional[EpochPosition], rng: Optional[dict[str, Any]]) -> dict[str, Any]:
            return checkpoint.training_state(cfg, objects, progress, monitor, position, rng,
                                             elapsed_s=progress.elapsed_s + time.perf_counter() - started,
                                             metrics_lines=metrics_log.lines)

        schedule = SaveSchedule(cfg.trainer.save_every_steps, cfg.trainer.save_every_minutes)
        saver = Checkpointer(checkpoints, snapshot, schedule, stop, shuffle_generator,
                             where=f"fold {fold}: " if fold is not None else "", ranks=ranks,
                             carried=task.carried_state)
        first_epoch = progress.epoch + 1 if progress.stopped_early is None else epochs + 1
        for epoch in range(first_epoch, epochs + 1):
            position = progress.position or EpochPosition.start(epoch, data.train, progress.global_step, device)
            progress.position = None
            saver.before_steps(position)
            compiled_before = compile_seconds(net)
            train_metrics = train_one_epoch(train_net, data.train, task, optimizer, scheduler, precision, grad_clip,
                                            penalty, epoch, epochs, position=position, on_step=saver.after_step,
                                            ranks=ranks, grad_norms=grad_norms)
            compile_s = compile_seconds(net) - compiled_before  # reported apart: throughput excludes it
            training_seconds = position.seconds_so_far() - compile_s  # train_one_epoch ends with a host sync
            saver.start_validation(position)
            ranks.sync_buffers(model)  # every process validates with rank 0's BatchNorm statistics
            val_metrics = (evaluate(net, data.val, task, precision, on_batch=saver.during_validation, ranks=ranks)
                           if validating else {})
            examples_per_sec = data.train.num_examples / training_seconds
            history = {**_prefixed("train", train_metrics), **_prefixed("val", val_metrics),
                       "lr": optimizer.param_groups[0]["lr"],
                       "examples_per_sec": examples_per_sec, **task.speed_metrics(examples_per_sec),
                       "epoch_time_s": position.seconds_so_far(), **({"compile_s": compile_s} if compile_s else {})}
            if scheduler is not None and scheduler.interval == "epoch":
                scheduler.step(history)
            metrics_log.write(epoch, history)
            if grad_norms is not None and ranks.is_main:
                grad_norms.write(metrics_log.writer, epoch)
            log.info(logs.epoch_line(epoch, epochs, history))
            for tag, text in (task.epoch_texts(model) if ranks.is_main else {}).items():
                metrics_log.write_text(tag, text, epoch)
            for tag, image in (task.epoch_images(model) if ranks.is_main else {}).items():
                metrics_log.write_image(tag, image, epoch)

            improved = _is_better(history[monitor], progress.best_value, task.mode)
            if improved:
                progress.best_value, progress.best_epoch = history[monitor], epoch
            progress.epoch, progress.history, progress.global_step = epoch, history, position.global_step
            if _patience_ran_out(epoch, progress.best_epoch, regularization.early_stopping):
                progress.stopped_early = epoch
            saver.end_of_epoch(epoch, improved)  # last.pt (and best.pt); a pending stop signal stops here
            if progress.stopped_early is not None:
                log.info("early stopping after epoch %d: %s has not improved for %d epochs (best: epoch %s)",
                         epoch, monitor, regularization.early_stopping, progress.best_epoch)
                break

        best_path = checkpoints / checkpoint.BEST
        if best_path.exists():  # test once, on the best epoch's weights (every process reads rank 0's file)
            model.load_state_dict(checkpoint.load_checkpoint(best_path, map_location=device)["model"])
        ranks.sync_buffers(model)
        test_metrics = _prefixed("test", evaluate(net, data.test, task, precision, on_batch=saver.during_test,
                                                  ranks=ranks))
        # e.g. multi-step forecasts and their figure: rank 0 writes, the others get its numbers
        test_metrics.update(ranks.from_main(lambda: task.after_test(net, run_dir)))
        duration = progress.elapsed_s + time.perf_counter() - started
        # The run's results, logged as scalars so the HPARAMS tab can show them next to the hparams.
        results = {**test_metrics, monitor.replace("/", "/best_"): _or_nan(progress.best_value),
                   "run/epochs": progress.epoch, "run/duration_s": duration}
        metrics_log.write(progress.epoch, results)
        if ranks.is_main:
            hparams.write_hparams(metrics_log.writer, hparams.run_hparams(cfg), results)

    summary_data = {
        "status": "completed",
        "epochs_completed": progress.epoch,
        "monitor": monitor,
        "mode": task.mode,
        "best_epoch": progress.best_epoch,
        "best_value": progress.best_value,
        "stopped_early": progress.stopped_early,  # the epoch early stopping ended the run, or null
        "final": progress.history,
        "test": test_metrics,
        "duration_s": duration,
        "device": str(device),
        "world_size": ranks.world,  # processes that trained it; each took batch_size_per_rank of every batch
        "batch_size_per_rank": cfg.trainer.batch_size // ranks.world,
        "model": {"params": summary.total_params, "flops_per_example": summary.flops},
        "resumed_from": progress.resumed_from,
        "compile": compile_report(net),  # null when device.compile=false
        "environment": environment(),
    }
    if ranks.is_main:
        write_json(run_dir / SUMMARY_FILE, summary_data)
        write_run_curves(run_dir, task.metric)  # curves.png
    logs.show_results(_results_rows(progress.history, test_metrics), run_dir)
    return summary_data


def train_one_epoch(model: nn.Module, loader: Loader, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: Optional[Scheduler], precision: Precision, grad_clip: Optional[float],
                    penalty: Optional[Callable[[], torch.Tensor]], epoch: int, epochs: int,
                    position: Optional[EpochPosition] = None,
                    on_step: Optional[Callable[[EpochPosition], None]] = None,
                    ranks: Ranks = Ranks(), grad_norms: Optional[GradNorms] = None) -> dict[str, float]:
    """forward, loss, backward, step for every batch; read the device-side sums once at the end.

    `penalty` (the L1 term) is added to the loss that is minimised; the reported loss is the
    task's own, so runs with and without it compare directly.

    `position` is where the epoch stands (a fresh start when None; a resumed one goes on from
    its step, in its order); it is advanced after every step, then `on_step(position)` is
    called: dlrun.saving.Checkpointer, which saves on its schedule and stops on a signal.
    `grad_norms` (trainer.log_grad_norms) records each layer's gradient norm after backward.

    A non-finite loss is noticed here, after the epoch, without a host sync per step; it
    raises TrainingDiverged before the caller can checkpoint the poisoned weights.

    On several processes (`ranks`; `model` is then DDP's wrapper) each trains on its part of
    every batch, its loss scaled by its share (dlrun.data.shard) so that DDP's averaged gradient
    is the one-process gradient; the epoch's sums are added up over the processes at the end.
    """
    model.train()
    task.start_pass(training=True)
    device = next(model.parameters()).device
    if position is None:
        position = EpochPosition.start(epoch, loader, 0, device)
    elif position.carried is not None:
        task.restore_carried_state(position.carried)
    # device.compile's switch, inside DDP's wrapper on several processes
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    switch = inner if isinstance(inner, CompileSwitch) else None
    if switch is not None:  # device.compile=auto decides here, for the steps left in the run
        switch.before_epoch(loader, (epochs - epoch + 1) * len(loader) - position.step)
    first_step, compiled_before, started = position.step, compile_seconds(inner), sync_clock(device)
    batches = loader.batches(position.order, start=position.step)
    for inputs, targets in logs.with_progress(batches, len(loader) - position.step, f"epoch {epoch}/{epochs}"):
        scale = loader.loss_scale(position.step)  # 1, except on several processes for a last, uneven batch
        compiling = switch is not None and switch.compiles_on(inputs)
        if compiling:  # this step's time is compile time, reported apart from training time
            compile_started = sync_clock(device)
        with precision.autocast():
            outputs = task.forward(model, inputs, targets)
            loss = task.loss(outputs, targets)
        objective = loss if scale == 1 else loss * scale
        if penalty is not None:
            objective = objective + penalty()
        optimizer.zero_grad(set_to_none=True)
        precision.backward(objective)
        if grad_norms is not None:
            grad_norms.add()
        precision.step(optimizer, model.parameters(), grad_clip)
        if scheduler is not None and scheduler.interval == "step":
            scheduler.step()
        with torch.no_grad():  # bookkeeping on the device: cheaper than three detached copies
            stats = task.batch_stats(outputs, targets, loss)
            position.advance(objective, stats if scale else torch.zeros_like(stats))  # a placeholder counts 0
        if compiling:
            switch.compiled_step(sync_clock(device) - compile_started)
        if on_step is not None:
            on_step(position)
    totals = ranks.totals(position)  # one all-reduce of the epoch's sums and step losses (none in one process)
    check_finite(totals)
    metrics = task.metrics(totals.sums.tolist())  # a host sync: the epoch's work is done
    if switch is not None:  # this epoch's step time, for later compile decisions
        compiling_s = switch.compile_seconds - compiled_before
        switch.after_epoch(position.step - first_step, time.perf_counter() - started - compiling_s)
    return metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], task: Task, precision: Precision,
             on_batch: Optional[Callable[[], None]] = None, ranks: Ranks = Ranks(),
             observe: Optional[Callable[[torch.Tensor, Any, torch.Tensor], None]] = None) -> dict[str, float]:
    """The task's metrics over `loader`; `on_batch()` is called before every batch (a stop check),
    `observe(inputs, outputs, targets)` after it (dlrun-eval's confusion matrix and pictures).

    On several processes each evaluates its part of every batch (`model` is the plain module,
    no collective per batch) and the sums are added up once at the end.
    """
    model.eval()
    task.start_pass(training=False)
    sums = None
    for inputs, targets in loader:
        if on_batch is not None:
            on_batch()
        with precision.autocast():
            outputs = task.forward(model, inputs, targets)
            loss = task.loss(outputs, targets)
        if observe is not None:
            observe(inputs, outputs, targets)
        batch = task.batch_stats(outputs, targets, loss)
        sums = batch if sums is None else sums + batch
    return task.metrics(ranks.sum_over(sums))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _patience_ran_out(epoch: int, best_epoch: Optional[int], patience: int) -> bool:
    """Early stopping: `patience` epochs (0 = never stop) have passed since the best one."""
    return patience > 0 and epoch - (best_epoch or 0) >= patience


def _is_better(value: float, best: Optional[float], mode: str) -> bool:
    if math.isnan(value):
        return False
    return best is None or (value > best if mode == "max" else value < best)


def _prefixed(split: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{split}/{name}": value for name, value in metrics.items()}


def _results_rows(history: dict[str, float], test: dict[str, float]) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    for name, value in {**history, **test}.items():
        split, _, metric = name.partition("/")
        if metric:
            rows.setdefault(split, {})[metric] = value
    return rows


def _save_model_summary(run_dir: Path, summary: Any) -> None:
    with open(run_dir / "model_summary.txt", "w") as handle:
        logs.Console(width=120, file=handle).print(summary.table())


def _default_run_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_root", "outputs")) / time.strftime("%Y-%m-%d/%H-%M-%S")


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else value
