"""Building a run's training objects from its config: device, data, task, model, optimizer and the rest.

`build_training` is the "build" of dlrun.train's build → fit → test. It draws the run's random
numbers in a fixed order (seeds, then the data, then the model's initial weights), so the same
config builds the same objects every time, which an exact resume depends on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.data.build import Data, build_data
from dlrun.engine.device import configure_backends, prepare_model, select_device
from dlrun.engine.distributed import Ranks
from dlrun.engine.grad_norms import GradNorms
from dlrun.engine.loop import Trainer
from dlrun.engine.optim import build_l1_penalty, build_optimizer
from dlrun.engine.precision import Precision
from dlrun.engine.schedulers import build_scheduler
from dlrun.models import build_model
from dlrun.tasks import build_task
from dlrun.tasks.model_check import check_model_fits


@dataclass
class Training:
    """One training run's objects. `model` holds the weights that are saved; `trainer.net` is what
    runs forward (the model, its compile switch, or DDP's wrapper around it)."""

    device: torch.device
    data: Data
    model: nn.Module
    net: nn.Module  # what evaluates: the model, or its compile switch
    trainer: Trainer
    shuffle_generator: torch.Generator  # the training batches' order; saved in checkpoints
    monitor: str  # the metric that picks the best epoch, e.g. val/acc

    @property
    def validating(self) -> bool:
        return len(self.data.val) > 0


def build_training(cfg: DictConfig, epochs: int, fold: Optional[int] = None, ranks: Ranks = Ranks(),
                   job_num: int = 0) -> Training:
    """The objects of a run of `epochs` epochs; with `fold`, validation is that fold of trainer.kfold.

    `ranks`: the processes of the run (each loads its part of the data); `job_num`: the job's
    number in a sweep (parallel jobs take the GPUs in turn).
    """
    device = select_device(cfg.device.type, job_num=job_num, local_rank=ranks.local_rank if ranks.distributed else None)
    configure_backends(cfg.device, processes_here=ranks.local_world)
    precision = Precision(cfg.device.amp, device)
    seed_everything(cfg.seed)
    shuffle_generator = torch.Generator().manual_seed(cfg.seed)
    data = build_data(cfg, device, shuffle_generator, fold=fold, shard=ranks.shard)
    task = build_task(cfg, data)
    regularization = cfg.regularization
    model = ranks.convert_batchnorm(build_model(cfg.model, regularization.dropout), cfg.device.sync_batchnorm)
    model = model.to(device)
    check_model_fits(model, data, task, cfg)  # a wrong input shape or head: one line before any step
    net = prepare_model(model, cfg.device)
    # With no validation split (dataset.val_fraction=0, e.g. d2l's 20-example weight-decay demo)
    # the training metric picks the best epoch and drives early stopping and plateau schedules.
    monitor = f"{'val' if len(data.val) > 0 else 'train'}/{task.metric}"
    optimizer = build_optimizer(cfg.optimizer, model, regularization)
    trainer = Trainer(
        net, task, optimizer, precision,
        scheduler=build_scheduler(cfg.scheduler, optimizer, epochs, len(data.train), monitor, task.mode),
        grad_clip=task.default_grad_clip if regularization.grad_clip is None else regularization.grad_clip,
        penalty=build_l1_penalty(model, regularization.l1, regularization.decay_bias_and_norm),
        grad_norms=GradNorms(model, precision) if cfg.trainer.log_grad_norms else None,
        ranks=ranks, epochs=epochs)
    return Training(device, data, model, net, trainer, shuffle_generator, monitor)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
