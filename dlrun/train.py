"""The training run: build everything from the config, then epochs of train → validate → checkpoint.

`run(cfg)` is what the CLI calls and what tests call with a config from Hydra's compose API.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun import checkpoint, logs
from dlrun.data import TensorLoader, build_data
from dlrun.device import configure_backends, prepare_model, select_device
from dlrun.errors import ConfigError, TrainingDiverged
from dlrun.models import build_model
from dlrun.models.summary import summarize
from dlrun.optim import Scheduler, build_optimizer, build_scheduler
from dlrun.precision import Precision
from dlrun.rundir import (SUMMARY_FILE, RunStatus, config_fingerprint, environment, find_latest_run,
                          write_json)
from dlrun.schema import validate
from dlrun.tasks import build_task

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
            RunStatus(run_dir, fingerprint=None).write("failed", error=str(error))
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = config_fingerprint(cfg)
    status = RunStatus(run_dir, fingerprint)
    status.write("running")
    try:
        summary = train(cfg, run_dir, fingerprint)
    except TrainingDiverged as error:
        status.write("diverged", error=str(error))
        raise
    except KeyboardInterrupt:
        status.write("interrupted", error="interrupted (KeyboardInterrupt); last.pt holds the last full epoch")
        raise
    except BaseException as error:
        status.write("failed", error=f"{type(error).__name__}: {error}")
        raise
    status.write("completed")
    return summary


def train(cfg: DictConfig, run_dir: Path, fingerprint: str) -> dict[str, Any]:
    started = time.perf_counter()
    device = select_device(cfg.device.type)
    configure_backends(cfg.device)
    precision = Precision(cfg.device.amp, device)
    seed_everything(cfg.seed)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)

    data = build_data(cfg, device, shuffle_generator)
    task = build_task(data.task)
    model = build_model(cfg.model, cfg.regularization.dropout).to(device)
    net = prepare_model(model, cfg.device)  # what runs forward; `model` holds the weights we save
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    scheduler = build_scheduler(cfg.scheduler, optimizer)
    monitor = f"val/{task.metric}"
    grad_clip = cfg.regularization.grad_clip
    grad_clip = task.default_grad_clip if grad_clip is None else grad_clip
    checkpoints = run_dir / "checkpoints"
    progress: dict[str, Any] = {"epoch": 0, "best_value": None, "best_epoch": None, "resumed_from": None}

    if cfg.trainer.resume:
        latest = find_latest_run(Path(cfg.output_root), fingerprint, exclude=run_dir)
        source = checkpoint.resolve_resume_path(str(cfg.trainer.resume), latest)
        progress.update(_restore(source, model, optimizer, scheduler, precision, shuffle_generator, checkpoints))
        log.info("resuming from %s after epoch %d", source, progress["epoch"])

    summary = summarize(model, _example_input(data.train))
    _save_model_summary(run_dir, summary)
    logs.show_start(_group_choices(), _overrides(), str(device), summary.table())

    epochs = min(cfg.trainer.epochs, cfg.debug.max_epochs or cfg.trainer.epochs)
    history: dict[str, float] = {}
    with logs.MetricsLog(run_dir) as metrics_log:
        for epoch in range(progress["epoch"] + 1, epochs + 1):
            epoch_started = time.perf_counter()
            train_metrics = train_one_epoch(net, data.train, task, optimizer, scheduler, precision, grad_clip,
                                            epoch, epochs)
            val_metrics = evaluate(net, data.val, task, precision)
            seconds = time.perf_counter() - epoch_started
            history = {**_prefixed("train", train_metrics), **_prefixed("val", val_metrics),
                       "lr": optimizer.param_groups[0]["lr"],
                       "examples_per_sec": data.train.num_examples / seconds, "epoch_time_s": seconds}
            if scheduler is not None and scheduler.interval == "epoch":
                scheduler.step(history)
            metrics_log.write(epoch, history)
            log.info(logs.epoch_line(epoch, epochs, history))

            improved = _is_better(history[monitor], progress["best_value"], task.mode)
            if improved:
                progress.update(best_value=history[monitor], best_epoch=epoch)
            progress["epoch"] = epoch
            state = _checkpoint_state(cfg, model, optimizer, scheduler, precision, shuffle_generator, progress,
                                      monitor)
            checkpoint.save_checkpoint(checkpoints / checkpoint.LAST, state)
            if improved:
                checkpoint.save_checkpoint(checkpoints / checkpoint.BEST, state)

        best_path = checkpoints / checkpoint.BEST
        if best_path.exists():  # test once, on the best epoch's weights
            model.load_state_dict(checkpoint.load_checkpoint(best_path, map_location=device)["model"])
        test_metrics = _prefixed("test", evaluate(net, data.test, task, precision))
        metrics_log.write(progress["epoch"], test_metrics)

    summary_data = {
        "status": "completed",
        "epochs_completed": progress["epoch"],
        "monitor": monitor,
        "best_epoch": progress["best_epoch"],
        "best_value": progress["best_value"],
        "final": history,
        "test": test_metrics,
        "duration_s": time.perf_counter() - started,
        "device": str(device),
        "model": {"params": summary.total_params, "flops_per_example": summary.flops},
        "resumed_from": progress["resumed_from"],
        "environment": environment(),
    }
    write_json(run_dir / SUMMARY_FILE, summary_data)
    logs.show_results(_results_rows(history, test_metrics), run_dir)
    return summary_data


def train_one_epoch(model: nn.Module, loader: TensorLoader, task: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Optional[Scheduler], precision: Precision, grad_clip: Optional[float],
                    epoch: int, epochs: int) -> dict[str, float]:
    """forward, loss, backward, step for every batch; read the device-side sums once at the end.

    A non-finite loss is noticed here, after the epoch, without a host sync per step; it
    raises TrainingDiverged before the caller can checkpoint the poisoned weights.
    """
    model.train()
    device = next(model.parameters()).device
    sums = None
    step_losses = torch.empty(len(loader), device=device)
    for step, (inputs, targets) in enumerate(logs.with_progress(loader, len(loader), f"epoch {epoch}/{epochs}")):
        with precision.autocast():
            outputs = task.forward(model, inputs)
            loss = task.loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        precision.backward(loss)
        precision.step(optimizer, model.parameters(), grad_clip)
        if scheduler is not None and scheduler.interval == "step":
            scheduler.step()
        step_losses[step] = loss.detach()
        batch = task.batch_stats(outputs.detach(), targets, loss.detach())
        sums = batch if sums is None else sums + batch
    bad_steps = (~torch.isfinite(step_losses)).nonzero()
    if len(bad_steps):
        raise TrainingDiverged(f"loss became non-finite in epoch {epoch} at step {int(bad_steps[0])} "
                               f"(of {len(loader)}); last.pt keeps the previous epoch. "
                               "Try a lower optimizer.lr or regularization.grad_clip")
    return task.metrics(sums.tolist())


@torch.no_grad()
def evaluate(model: nn.Module, loader: TensorLoader, task: Any, precision: Precision) -> dict[str, float]:
    model.eval()
    sums = None
    for inputs, targets in loader:
        with precision.autocast():
            outputs = task.forward(model, inputs)
            loss = task.loss(outputs, targets)
        batch = task.batch_stats(outputs, targets, loss)
        sums = batch if sums is None else sums + batch
    return task.metrics(sums.tolist())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _checkpoint_state(cfg: DictConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                      scheduler: Optional[Scheduler], precision: Precision, shuffle_generator: torch.Generator,
                      progress: dict[str, Any], monitor: str) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "grad_scaler": precision.state_dict(),
        "epoch": progress["epoch"],
        "best": {"metric": monitor, "value": progress["best_value"], "epoch": progress["best_epoch"]},
        "rng": checkpoint.rng_states(shuffle_generator),
        "config": OmegaConf.to_container(cfg, resolve=True),
    }


def _restore(source: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Optional[Scheduler],
             precision: Precision, shuffle_generator: torch.Generator, checkpoints: Path) -> dict[str, Any]:
    """Load `source` into the live objects; carry the source run's best.pt over for the final test."""
    state = checkpoint.load_checkpoint(source)
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        precision.load_state_dict(state.get("grad_scaler"))
    except (RuntimeError, ValueError, KeyError) as error:
        raise checkpoint.CheckpointError(
            f"checkpoint {source} does not fit this model/optimizer: {str(error).splitlines()[0]}") from None
    checkpoint.restore_rng_states(state["rng"], shuffle_generator)
    best = source.parent / checkpoint.BEST
    if best.exists() and best.resolve() != (checkpoints / checkpoint.BEST).resolve():
        checkpoints.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best, checkpoints / checkpoint.BEST)
    return {"epoch": state["epoch"], "best_value": state["best"]["value"], "best_epoch": state["best"]["epoch"],
            "resumed_from": str(source)}


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


def _example_input(loader: TensorLoader) -> torch.Tensor:
    example = loader.split.inputs[:1]
    return loader.transform(example) if loader.transform is not None else example


def _save_model_summary(run_dir: Path, summary: Any) -> None:
    recorder = logs.Console(record=True, width=120, file=open(run_dir / "model_summary.txt", "w"))
    recorder.print(summary.table())
    recorder.file.close()


def _default_run_dir(cfg: DictConfig) -> Path:
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.get("output_root", "outputs")) / time.strftime("%Y-%m-%d/%H-%M-%S")


def _group_choices() -> dict[str, str]:
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices  # Hydra lists them last-composed first
    return {group: str(option) for group, option in reversed(choices.items()) if not group.startswith("hydra/")}


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
