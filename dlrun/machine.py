"""What of the machine a job may use: its cores, and its share of them (and of the GPUs) when a
sweep runs several jobs at once.

When a sweep runs jobs in parallel on one machine (joblib, submitit_local), the sweep's main
process puts the number of jobs running at once in the environment variable PARALLEL_JOBS_ENV
(dlrun.run.leaderboard.Leaderboard); each job then takes its share of the CPU cores and, on a
host with several GPUs, a GPU chosen by its job number. Plain functions of the environment: no
torch, so data loaders and the training device alike can ask.
"""

from __future__ import annotations

import os
from typing import Optional

# The number of jobs of a sweep running at once on this machine, set by the sweep's main
# process for its jobs and read here to share out CPU threads and GPUs.
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
