"""The training step and the evaluation pass: forward, loss, backward, step for every batch.

`train_one_epoch` and `evaluate` are the loop every run, every tool and every benchmark uses.
The per-step path does no host sync: a task's batch statistics are summed on the device
(`EpochPosition.advance`) and read once at the end of the epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from dlrun.engine.compiling import CompileSwitch, compile_seconds
from dlrun.engine.distributed import Ranks
from dlrun.engine.grad_norms import GradNorms
from dlrun.engine.position import EpochPosition, check_finite
from dlrun.engine.precision import Precision
from dlrun.engine.schedulers import Scheduler
from dlrun.report.console import with_progress
from dlrun.tasks import Task


@dataclass
class Trainer:
    """What a training step uses: the module to call, how it is scored, and how its weights change.

    `net` runs forward (the model, or its compile switch, or DDP's wrapper on several processes);
    `penalty` (the L1 term) is added to the loss that is minimised, while the reported loss is the
    task's own, so runs with and without it compare directly; `grad_norms`
    (trainer.log_grad_norms) records each layer's gradient norm after backward; `epochs` is the
    run's length, which device.compile=auto weighs its compile time against.
    """

    net: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    precision: Precision
    scheduler: Optional[Scheduler] = None
    grad_clip: Optional[float] = None
    penalty: Optional[Callable[[], torch.Tensor]] = None
    grad_norms: Optional[GradNorms] = None
    ranks: Ranks = field(default_factory=Ranks)
    epochs: int = 1

    @property
    def compile_switch(self) -> Optional[CompileSwitch]:
        """device.compile's switch, inside DDP's wrapper on several processes (None without one)."""
        inner = self.net.module if isinstance(self.net, nn.parallel.DistributedDataParallel) else self.net
        return inner if isinstance(inner, CompileSwitch) else None


def train_one_epoch(trainer: Trainer, loader: Any, position: Optional[EpochPosition] = None,
                    on_step: Optional[Callable[[EpochPosition], None]] = None) -> dict[str, float]:
    """forward, loss, backward, step for every batch of `loader`; read the device-side sums once at the end.

    `position` is where the epoch stands (None: a fresh start of epoch 1; a resumed one goes on
    from its step, in its order); it is advanced after every step, then `on_step(position)` is
    called: dlrun.run.save_points.SavePoints, which saves on its schedule and stops on a signal.

    A non-finite loss is noticed here, after the epoch, without a host sync per step; it
    raises TrainingDiverged before the caller can checkpoint the poisoned weights.

    On several processes (`trainer.ranks`; `trainer.net` is then DDP's wrapper) each trains on its
    part of every batch, its loss scaled by its share (dlrun.data.shard) so that DDP's averaged
    gradient is the one-process gradient; the epoch's sums are added up over the processes at the end.
    """
    net, task, optimizer, precision = trainer.net, trainer.task, trainer.optimizer, trainer.precision
    net.train()
    task.start_pass(training=True)
    device = next(net.parameters()).device
    if position is None:
        position = EpochPosition.start(1, loader, 0, device)
    elif position.carried is not None:
        task.restore_carried_state(position.carried)
    switch = trainer.compile_switch
    if switch is not None:  # device.compile=auto decides here, for the steps left in the run
        switch.before_epoch(loader, (trainer.epochs - position.epoch + 1) * len(loader) - position.step)
    first_step, compiled_before, started = position.step, compile_seconds(switch), sync_clock(device)
    batches = loader.batches(position.order, start=position.step)
    description = f"epoch {position.epoch}/{trainer.epochs}"
    for inputs, targets in with_progress(batches, len(loader) - position.step, description):
        scale = loader.loss_scale(position.step)  # 1, except on several processes for a last, uneven batch
        compiling = switch is not None and switch.compiles_on(inputs)
        if compiling:  # this step's time is compile time, reported apart from training time
            compile_started = sync_clock(device)
        with precision.autocast():
            outputs = task.forward(net, inputs, targets)
            loss = task.loss(outputs, targets)
        objective = loss if scale == 1 else loss * scale
        if trainer.penalty is not None:
            objective = objective + trainer.penalty()
        optimizer.zero_grad(set_to_none=True)
        precision.backward(objective)
        if trainer.grad_norms is not None:
            trainer.grad_norms.add()
        precision.step(optimizer, net.parameters(), trainer.grad_clip)
        if trainer.scheduler is not None and trainer.scheduler.interval == "step":
            trainer.scheduler.step()
        with torch.no_grad():  # bookkeeping on the device: cheaper than three detached copies
            stats = task.batch_stats(outputs, targets, loss)
            position.advance(objective, stats if scale else torch.zeros_like(stats))  # a placeholder counts 0
        if compiling:
            switch.compiled_step(sync_clock(device) - compile_started)
        if on_step is not None:
            on_step(position)
    totals = trainer.ranks.totals(position)  # one all-reduce of the epoch's sums and step losses (none in one process)
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


def sync_clock(device: torch.device) -> float:
    """perf_counter after the device's queued work (a step's time on CUDA includes its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
