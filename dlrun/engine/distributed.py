"""One run on several processes: what DistributedDataParallel's processes share, and how.

A run is one process (`Ranks()`, rank 0 of 1, and every method below returns its input
unchanged: the one-process path is the plain path) or several started by torchrun or a submitit
(Slurm) job and joined by dlrun.processes.

The contract between the processes of a run:

- **Rank 0 writes the run directory**, alone: it decides which directory the attempt writes
  (dlrun.resume), writes status.json, checkpoints, metrics.jsonl, TensorBoard events and
  summary.json, and tells the others the plan (`from_main`). Under torchrun every process runs
  the Hydra app; the others get a throwaway Hydra directory outside the outputs and print
  nothing but errors (dlrun.processes).
- **Same data per optimizer step as one process**: every process draws the same global
  permutation and takes its part of every global batch (dlrun.data.shard); DDP averages the
  gradients; the epoch's metric sums and step losses are reduced once per epoch (`totals`).
- **Stopping together** (`verdict`, `post`, `agree_now`): a signal reaches the processes at
  different steps, and one that stopped while another ran its next backward would leave that
  one waiting in the gradient all-reduce. After every step each process adds its stop flag
  (and whether the save clock ran out) to an asynchronous all-reduce on a CPU gloo group, and
  acts on the previous step's result: all processes see the same verdict at the same step, one
  step after the signal, with no host sync of the training device. Epoch boundaries agree at
  once. Validation and the final test are not cut short: a stop is agreed when they end.
- **Checkpoints stay one-process checkpoints**: the plain module's weights, the global step and
  the global order, metric totals (`totals`), and the other processes' RNG states under
  `rng.ranks` (`gather_rng`); a checkpoint continues on any number of processes (`take_share`).
- **Faults end every process**: the process group has a timeout (`device.dist_timeout_min`), a
  failing process records its error in status.json unless another failure is already there
  (dlrun.rundir.RunStatus), and the group is torn down on the way out (dlrun.processes.leave),
  so the others fail at their next collective instead of waiting; torchrun then stops them all.
"""

from __future__ import annotations

import logging
import pickle
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig
from torch import nn

from dlrun.data.shard import Shard
from dlrun.engine.position import EpochPosition
from dlrun.errors import ConfigError, ReportedByMain

log = logging.getLogger("dlrun")
T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place among the processes of one run; `Ranks()` is a run of one process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    host_group: Any = None  # a gloo group for small host-side exchanges (stop flags, objects)
    _pending: Optional[tuple[Any, torch.Tensor]] = field(default=None, repr=False)  # last step's flag all-reduce

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def shard(self) -> Shard:
        return Shard(self.rank, self.world)

    def check(self, cfg: DictConfig) -> None:
        """One-line errors for settings that cannot be shared out over these processes."""
        if not self.distributed:
            return
        batch = cfg.trainer.batch_size
        if batch % self.world:
            lower, higher = max(self.world, batch - batch % self.world), batch + self.world - batch % self.world
            raise ConfigError(f"trainer.batch_size={batch} does not split evenly over {self.world} processes "
                              f"(it is the global batch, shared out equally); use a multiple of {self.world}, "
                              f"e.g. {lower} or {higher}")
        if cfg.dataset.get("task") == "detection":
            raise ConfigError("task=detection runs on one process for now: its mAP needs every validation "
                              "image's detections in one place; run it without torchrun (a sweep may run "
                              "one process per job, hydra/launcher=joblib)")
        on_cuda = cfg.device.type == "cuda" or (cfg.device.type == "auto" and torch.cuda.is_available())
        if cfg.device.sync_batchnorm and not on_cuda:
            raise ConfigError("device.sync_batchnorm=true needs CUDA (PyTorch's SyncBatchNorm runs on GPUs only); "
                              "on the CPU each process normalizes over its own part of the batch")

    def convert_batchnorm(self, model: nn.Module, enabled: bool) -> nn.Module:
        """BatchNorm layers normalize over the whole global batch (device.sync_batchnorm) across processes."""
        if not (enabled and self.distributed):
            return model
        log.info("device.sync_batchnorm: BatchNorm layers use the statistics of the global batch")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, net: nn.Module, device: torch.device) -> nn.Module:
        """DistributedDataParallel around the module that trains; its construction copies rank 0's weights."""
        if not self.distributed:
            return net
        return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)

    def from_main(self, compute: Callable[[], T]) -> T:
        """Rank 0 computes (plans the run, prepares its directory); the others receive the result or its error."""
        if not self.distributed:
            return compute()
        box: list[Any] = [None]
        if self.is_main:
            try:
                box[0] = ("value", compute())
            except Exception as error:
                box[0] = ("error", _picklable(error))
                dist.broadcast_object_list(box, src=0, group=self.host_group)
                raise
        dist.broadcast_object_list(box, src=0, group=self.host_group)
        kind, value = box[0]
        if kind == "error":
            raise ReportedByMain(value)
        return value

    def seed_own_streams(self, seed: int, global_step: int = 0) -> None:
        """Give this process dropout and augmentation random numbers of its own (rank 0 keeps `seed`'s).

        Called after the model is built, so every process starts from the same weights; `global_step`
        keeps a stream drawn when continuing a checkpoint without this rank's states apart from the
        one of a fresh start.
        """
        if self.is_main:
            return
        own = int(np.random.SeedSequence([seed, self.rank, global_step]).generate_state(1)[0])
        random.seed(own)
        np.random.seed(own)
        torch.manual_seed(own)

    def totals(self, position: EpochPosition) -> EpochPosition:
        """The position as one process would hold it: metric sums and step losses over every process, and
        a carried recurrent state of every stream. A copy; one all-reduce (a collective: all processes call it).

        The step losses are averaged: each process's loss was scaled by its share of the batch
        (dlrun.data.shard), so their mean is the global batch's loss.
        """
        if not self.distributed:
            return position
        losses = position.step_losses[:position.step].float() / self.world
        sums = position.sums.float() if position.sums is not None else losses.new_zeros(0)
        packed = torch.cat([losses, sums])
        dist.all_reduce(packed)
        step_losses = position.step_losses.clone()
        step_losses[:position.step] = packed[:position.step]
        return replace(position, step_losses=step_losses,
                       sums=packed[position.step:] if position.sums is not None else None,
                       carried=self._gather_streams(position.carried))

    def take_share(self, position: EpochPosition) -> EpochPosition:
        """The inverse of `totals` for a restored position: rank 0 carries the sums, each process its streams."""
        if not self.distributed:
            return position
        sums = position.sums if self.is_main or position.sums is None else torch.zeros_like(position.sums)
        return replace(position, sums=sums, carried=self._own_streams(position.carried))

    def sum_over(self, sums: Optional[torch.Tensor]) -> Optional[list[float]]:
        """Evaluation sums added over the processes (a process whose part was empty has None), as floats."""
        if not self.distributed:
            return sums.tolist() if sums is not None else None
        everyone: list[Optional[list[float]]] = [None] * self.world
        dist.all_gather_object(everyone, sums.tolist() if sums is not None else None, group=self.host_group)
        present = [part for part in everyone if part is not None]
        return [sum(values) for values in zip(*present)] if present else None

    def gather_rng(self, rng: dict[str, Any]) -> dict[str, Any]:
        """Rank 0's RNG states with the other processes' under `ranks` (the shuffle generator is shared)."""
        if not self.distributed:
            return rng
        own = {key: value for key, value in rng.items() if key != "shuffle"}
        everyone: list[Any] = [None] * self.world
        dist.all_gather_object(everyone, own, group=self.host_group)
        return {**rng, "ranks": everyone[1:]}

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every process rank 0's buffers (BatchNorm statistics): evaluation then matches the checkpoint."""
        if self.distributed:
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def verdict(self, signum: Optional[int], clock_due: bool) -> tuple[Optional[int], bool]:
        """(stop signal, save due by the clock) to act on after a step: one process's own flags, or
        what every process posted after the previous step (the same on all of them)."""
        if not self.distributed:
            return signum, clock_due
        if self._pending is None:
            return None, False
        work, flags = self._pending
        work.wait()
        self._pending = None
        agreed_signal, agreed_clock = flags.tolist()
        return agreed_signal or None, bool(agreed_clock)

    def post(self, signum: Optional[int], clock_due: bool) -> None:
        """Several processes: this step's flags start an asynchronous all-reduce (max) on the gloo group,
        read by `verdict` after the next step; the training device is not synchronized."""
        if self.distributed:
            flags = torch.tensor([signum or 0, int(clock_due)], dtype=torch.int64)
            work = dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.host_group, async_op=True)
            self._pending = (work, flags)

    def agree_now(self, signum: Optional[int]) -> Optional[int]:
        """The stop signal any process has received up to now (and any verdict still pending), agreed at once."""
        if not self.distributed:
            return signum
        pending = 0
        if self._pending is not None:
            work, flags = self._pending
            work.wait()
            pending, self._pending = int(flags[0]), None
        flag = torch.tensor([max(signum or 0, pending)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.host_group)
        return int(flag) or None

    def _gather_streams(self, carried: Any) -> Any:
        """A recurrent state (layers, streams, features), or a tuple of them, with every process's streams."""
        if isinstance(carried, torch.Tensor):
            parts = [torch.empty_like(carried) for _ in range(self.world)]
            dist.all_gather(parts, carried.contiguous())
            return torch.cat(parts, dim=1)
        if isinstance(carried, (tuple, list)):
            return type(carried)(self._gather_streams(part) for part in carried)
        return carried

    def _own_streams(self, carried: Any) -> Any:
        if isinstance(carried, torch.Tensor):
            lo, hi = self.shard.part(0, carried.shape[1])
            return carried[:, lo:hi].contiguous()
        if isinstance(carried, (tuple, list)):
            return type(carried)(self._own_streams(part) for part in carried)
        return carried


def _picklable(error: Exception) -> Exception:
    """The error itself when it can travel to the other processes, else one that carries its message."""
    try:
        pickle.dumps(error)
        return error
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")
