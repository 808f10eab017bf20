"""Choosing the training device and CPU threads, also for jobs that share a machine.

When a sweep runs jobs in parallel on one machine (joblib, submitit_local), the sweep's
main process puts the number of jobs running at once in the environment variable
PARALLEL_JOBS_ENV (dlrun.sweep.Leaderboard); each job then takes its share of the CPU cores and,
on a host with several GPUs, a GPU chosen by its job number.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from dlrun.errors import ConfigError
from dlrun.sweep import PARALLEL_JOBS_ENV


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


def select_device(kind: str, job_num: int = 0) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is an error, not a fallback."""
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=cpu or device=auto")
    if kind != "cuda":
        return torch.device(kind)
    index = gpu_for_job(job_num, torch.cuda.device_count(), parallel_jobs())
    torch.cuda.set_device(index)  # so libraries that allocate on "the current GPU" follow the job
    return torch.device("cuda", index)


def configure_threads(num_threads: Optional[int]) -> None:
    """Set intra-op CPU threads: as asked, or this job's share of the cores in a parallel sweep."""
    threads = threads_per_job(num_threads, available_cores(), parallel_jobs())
    if threads is not None:
        torch.set_num_threads(threads)
