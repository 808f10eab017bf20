"""The training device and how PyTorch uses it: threads, cuDNN, determinism, memory format, compile.

When a sweep runs jobs in parallel on one machine (joblib, submitit_local), the sweep's
main process puts the number of jobs running at once in the environment variable
PARALLEL_JOBS_ENV (dlrun.sweep.Leaderboard); each job then takes its share of the CPU cores and,
on a host with several GPUs, a GPU chosen by its job number.
"""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional

import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.compiling import CompileSwitch
from dlrun.errors import ConfigError

log = logging.getLogger("dlrun")
# The number of jobs of a sweep running at once on this machine, set by the sweep's main
# process for its jobs (dlrun.sweep.Leaderboard) and read here to share out CPU threads and GPUs.
PARALLEL_JOBS_ENV = "DLRUN_PARALLEL_JOBS"


def parallel_jobs() -> int:
    """How many jobs of this sweep run at the same time on this machine (1 outside a parallel sweep)."""
    try:
        return max(1, int(os.environ.get(PARALLEL_JOBS_ENV, "1")))
    except ValueError:
        return 1


def available_cores() -> int:
    """The cores this process may run on (respects taskset, cgroups and Slurm allocations)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_per_job(requested: Optional[int], cores: int, parallel: int) -> Optional[int]:
    """`requested` if set; else cores / parallel jobs (at least 1); None (PyTorch's default) for one job."""
    if requested is not None:
        return requested
    return max(1, cores // parallel) if parallel > 1 else None


def gpu_for_job(job_num: int, device_count: int, parallel: int) -> int:
    """Parallel jobs take the GPUs in turn by job number; a job that runs alone uses the first."""
    return job_num % device_count if parallel > 1 and device_count > 1 else 0


def select_device(kind: str, job_num: int = 0, local_rank: Optional[int] = None) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is an error, not a fallback.

    One of several processes of a run (`local_rank`, dlrun.distributed) takes its own GPU.
    """
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=cpu or device=auto")
    if kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    index = local_rank % count if local_rank is not None else gpu_for_job(job_num, count, parallel_jobs())
    torch.cuda.set_device(index)  # so libraries that allocate on "the current GPU" follow the job
    return torch.device("cuda", index)


def configure_backends(device_cfg: DictConfig, processes_here: int = 1) -> None:
    """Process-wide settings; call before the first CUDA operation (cuBLAS reads its env var once).

    CPU threads: as asked, or this process's share of the cores when a parallel sweep or a run
    on several processes (`processes_here` of them on this host) shares them.
    """
    threads = threads_per_job(device_cfg.num_threads, available_cores(), parallel_jobs() * processes_here)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = bool(device_cfg.cudnn_benchmark) and not device_cfg.deterministic
    torch.use_deterministic_algorithms(bool(device_cfg.deterministic))
    if device_cfg.deterministic:
        # cuBLAS is only reproducible with a fixed workspace (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log.info("deterministic algorithms on (CUBLAS_WORKSPACE_CONFIG=%s, cudnn.benchmark off)",
                 os.environ["CUBLAS_WORKSPACE_CONFIG"])


def prepare_model(model: nn.Module, device_cfg: DictConfig) -> nn.Module:
    """Memory format and compilation (dlrun.compiling). Returns the module to call; `model` keeps the weights to save."""
    if device_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if device_cfg.compile is False:
        return model
    # compile=true or auto: dlrun.compiling compiles the training step (auto: when it pays) and times it.
    settings = (f"{next(model.parameters(), torch.empty(0)).device.type} amp={device_cfg.amp} "
                f"channels_last={device_cfg.channels_last} threads={torch.get_num_threads()}")
    return CompileSwitch(model, device_cfg.compile, device_cfg.compile_mode, settings)


def channels_last_transform(enabled: bool) -> Optional[Callable[[torch.Tensor], torch.Tensor]]:
    """Batch transform giving image batches the NHWC layout the channels_last model expects."""
    if not enabled:
        return None

    def to_channels_last(batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch

    return to_channels_last
