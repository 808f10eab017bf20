"""The training run: build everything from the config, then epochs of train → validate → checkpoint.

`run(cfg)` is what the CLI calls and what tests call with a config from Hydra's compose API.
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from torch import nn

from dlrun import checkpoint, hparams, logs
from dlrun.data import Loader, build_data
from dlrun.device import configure_backends, prepare_model, select_device
from dlrun.errors import ConfigError, TrainingDiverged
from dlrun.kfold import train_folds
from dlrun.models import build_model
from dlrun.models.summary import summarize
from dlrun.optim import build_l1_penalty, build_optimizer
from dlrun.precision import Precision
from dlrun.rundir import (SUMMARY_FILE, RunStatus, clear_training_outputs, completed_result, config_fingerprint,
                          environment, find_latest_run, write_json)
from dlrun.schedulers import Scheduler, build_scheduler
from dlrun.schema import validate
from dlrun.tasks import Task, build_task

log = logging.getLogger("dlrun")


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Validate `cfg`, train, test on the best checkpoint; return what summary.json holds.

    `run_dir` defaults to Hydra's output directory. status.json tracks the outcome; a
    failure is recorded there and re-raised for the caller.
    """
    run_dir = Path(run_dir) if run_dir is not None else _default_run_dir(cfg)
    try:
        cfg = validate(cfg)
    except ConfigError as error:
        if run_dir.exists():  # Hydra made it already: say there why nothing ran
            RunStatus(run_dir, fingerprint=None).write("failed", error=str(error), exit_code=error.exit_code)
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(cfg)
    if cfg.sweep.resume:  # finishing a sweep: this job's directory may hold its result already
        done = completed_result(run_dir, fingerprint, planned_epochs(cfg))
        if done is not None:
            log.info("skipped: %s already completed this config (sweep.resume)", run_dir)
            return done
        clear_training_outputs(run_dir)
    status = RunStatus(run_dir, fingerprint)
    status.write("running")
    try:
        if cfg.trainer.kfold:
            summary = train_folds(cfg, run_dir, fingerprint, train)
        else:
            summary = train(cfg, run_dir, fingerprint)
    except TrainingDiverged as error:
        status.write("diverged", error=str(error), exit_code=error.exit_code)
        raise
    except KeyboardInterrupt:
        status.write("interrupted", error="interrupted (KeyboardInterrupt); last.pt holds the last full epoch",
                     exit_code=130)
        raise
    except BaseException as error:
        status.write("failed", error=f"{type(error).__name__}: {error}", exit_code=getattr(error, "exit_code", 1))
        raise
    status.write("completed")
    return summary


def train(cfg: DictConfig, run_dir: Path, fingerprint: str, fold: Optional[int] = None) -> dict[str, Any]:
    """One training run; with `fold`, validation is that fold of trainer.kfold (see dlrun.kfold)."""
    started = time.perf_counter()
    device = select_device(cfg.device.type, job_num=HydraConfig.get().job.num if _in_multirun() else 0)
    configure_backends(cfg.device)
    precision = Precision(cfg.device.amp, device)
    seed_everything(cfg.seed)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)

    data = build_data(cfg, device, shuffle_generator, fold=fold)
    regularization = cfg.regularization
    task = build_task(cfg, data)
    model = build_model(cfg.model, regularization.dropout).to(device)
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
    checkpoints = run_dir / "checkpoints"
    # What a checkpoint carries across a resume; `history` is the last epoch's metrics.
    progress: dict[str, Any] = {"epoch": 0, "best_value": None, "best_epoch": None, "resumed_from": None,
                                "stopped_early": None, "history": {}}

    if cfg.trainer.resume:
        resume = str(cfg.trainer.resume)
        latest = find_latest_run(Path(cfg.output_root), fingerprint, exclude=run_dir) if resume == "auto" else None
        source = checkpoint.resolve_resume_path(resume, latest)
        progress.update(checkpoint.restore_training_state(source, model, optimizer, scheduler, precision,
                                                          shuffle_generator, checkpoints))
        log.info("resuming from %s after epoch %d", source, progress["epoch"])
        if progress["epoch"] >= epochs:
            log.info("nothing left to train: the checkpoint is at epoch %d of %d; testing it", progress["epoch"], epochs)

    # An example from the test loader: it is not augmented, so no random numbers are drawn
    # here (an exact resume depends on the RNG streams being untouched).
    summary = summarize(model, data.test.example_input())
    _save_model_summary(run_dir, summary)
    device_line = f"{device}, {torch.get_num_threads()} CPU threads"
    logs.show_start(hparams.group_choices(), hparams.overrides(), device_line, summary.table())

    with logs.MetricsLog(run_dir, overlay=("loss", task.metric)) as metrics_log:
        for epoch in range(progress["epoch"] + 1, epochs + 1):
            epoch_started = time.perf_counter()
            train_metrics = train_one_epoch(net, data.train, task, optimizer, scheduler, precision, grad_clip,
                                            penalty, epoch, epochs)
            training_seconds = time.perf_counter() - epoch_started  # train_one_epoch ends with a host sync
            val_metrics = evaluate(net, data.val, task, precision) if validating else {}
            examples_per_sec = data.train.num_examples / training_seconds
            history = {**_prefixed("train", train_metrics), **_prefixed("val", val_metrics),
                       "lr": optimizer.param_groups[0]["lr"],
                       "examples_per_sec": examples_per_sec, **task.speed_metrics(examples_per_sec),
                       "epoch_time_s": time.perf_counter() - epoch_started}
            if scheduler is not None and scheduler.interval == "epoch":
                scheduler.step(history)
            metrics_log.write(epoch, history)
            log.info(logs.epoch_line(epoch, epochs, history))
            for tag, text in task.epoch_texts(model).items():
                metrics_log.write_text(tag, text, epoch)

            improved = _is_better(history[monitor], progress["best_value"], task.mode)
            if improved:
                progress.update(best_value=history[monitor], best_epoch=epoch)
            progress.update(epoch=epoch, history=history)
            state = checkpoint.training_state(cfg, model, optimizer, scheduler, precision, shuffle_generator,
                                              progress, monitor)
            checkpoint.save_checkpoint(checkpoints / checkpoint.LAST, state)
            if improved:
                checkpoint.save_checkpoint(checkpoints / checkpoint.BEST, state)
            if _patience_ran_out(epoch, progress["best_epoch"], regularization.early_stopping):
                progress["stopped_early"] = epoch
                log.info("early stopping after epoch %d: %s has not improved for %d epochs (best: epoch %s)",
                         epoch, monitor, regularization.early_stopping, progress["best_epoch"])
                break

        best_path = checkpoints / checkpoint.BEST
        if best_path.exists():  # test once, on the best epoch's weights
            model.load_state_dict(checkpoint.load_checkpoint(best_path, map_location=device)["model"])
        test_metrics = _prefixed("test", evaluate(net, data.test, task, precision))
        test_metrics.update(task.after_test(net, run_dir))  # e.g. multi-step forecasts and their figure
        duration = time.perf_counter() - started
        # The run's results, logged as scalars so the HPARAMS tab can show them next to the hparams.
        results = {**test_metrics, monitor.replace("/", "/best_"): _or_nan(progress["best_value"]),
                   "run/epochs": progress["epoch"], "run/duration_s": duration}
        metrics_log.write(progress["epoch"], results)
        hparams.write_hparams(metrics_log.writer, hparams.run_hparams(cfg), results)

    summary_data = {
        "status": "completed",
        "epochs_completed": progress["epoch"],
        "monitor": monitor,
        "mode": task.mode,
        "best_epoch": progress["best_epoch"],
        "best_value": progress["best_value"],
        "stopped_early": progress["stopped_early"],  # the epoch early stopping ended the run, or null
        "final": progress["history"],
        "test": test_metrics,
        "duration_s": duration,
        "device": str(device),
        "model": {"params": summary.total_params, "flops_per_example": summary.flops},
        "resumed_from": progress["resumed_from"],
        "environment": environment(),
    }
    write_json(run_dir / SUMMARY_FILE, summary_data)
    logs.show_results(_results_rows(progress["history"], test_metrics), run_dir)
    return summary_data


def train_one_epoch(model: nn.Module, loader: Loader, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: Optional[Scheduler], precision: Precision, grad_clip: Optional[float],
                    penalty: Optional[Callable[[], torch.Tensor]], epoch: int, epochs: int) -> dict[str, float]:
    """forward, loss, backward, step for every batch; read the device-side sums once at the end.

    `penalty` (the L1 term) is added to the loss that is minimised; the reported loss is the
    task's own, so runs with and without it compare directly.

    A non-finite loss is noticed here, after the epoch, without a host sync per step; it
    raises TrainingDiverged before the caller can checkpoint the poisoned weights.
    """
    model.train()
    task.start_pass(training=True)
    device = next(model.parameters()).device
    sums = None
    step_losses = torch.empty(len(loader), device=device)
    for step, (inputs, targets) in enumerate(logs.with_progress(loader, len(loader), f"epoch {epoch}/{epochs}")):
        with precision.autocast():
            outputs = task.forward(model, inputs)
            loss = task.loss(outputs, targets)
        objective = loss if penalty is None else loss + penalty()
        optimizer.zero_grad(set_to_none=True)
        precision.backward(objective)
        precision.step(optimizer, model.parameters(), grad_clip)
        if scheduler is not None and scheduler.interval == "step":
            scheduler.step()
        step_losses[step] = objective.detach()
        batch = task.batch_stats(outputs.detach(), targets, loss.detach())
        sums = batch if sums is None else sums + batch
    bad_steps = (~torch.isfinite(step_losses)).nonzero()
    if len(bad_steps):
        raise TrainingDiverged(f"loss became non-finite in epoch {epoch} at step {int(bad_steps[0])} "
                               f"(of {len(loader)}); last.pt keeps the previous epoch. "
                               "Try a lower optimizer.lr or regularization.grad_clip")
    return task.metrics(sums.tolist())


@torch.no_grad()
def evaluate(model: nn.Module, loader: Loader, task: Task, precision: Precision) -> dict[str, float]:
    model.eval()
    task.start_pass(training=False)
    sums = None
    for inputs, targets in loader:
        with precision.autocast():
            outputs = task.forward(model, inputs)
            loss = task.loss(outputs, targets)
        batch = task.batch_stats(outputs, targets, loss)
        sums = batch if sums is None else sums + batch
    return task.metrics(sums.tolist())


def planned_epochs(cfg: DictConfig) -> int:
    """trainer.epochs, capped by debug.max_epochs."""
    return min(cfg.trainer.epochs, cfg.debug.max_epochs or cfg.trainer.epochs)


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


def _in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
