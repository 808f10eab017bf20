"""What of the machine a job may use: its cores, and its share of them (and of the GPUs) when a
sweep runs several jobs at once, or when other work keeps some of them busy.

When a sweep runs jobs in parallel on one machine (joblib, submitit_local), the sweep's main
process puts the number of jobs running at once in the environment variable PARALLEL_JOBS_ENV
(dlrun.run.leaderboard.Leaderboard); each job then takes its share of the CPU cores and, on a
host with several GPUs, a GPU chosen by its job number. Plain functions of the environment: no
torch, so data loaders and the training device alike can ask.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

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


@dataclass(frozen=True)
class ThreadChoice:
    """CPU threads for this process (None: PyTorch's default) and, for `auto`, what they were chosen from."""

    threads: Optional[int]
    why: str = ""


def choose_threads(requested: Union[int, str, None], parallel: int) -> ThreadChoice:
    """device.num_threads: an integer as given; null as `threads_per_job` says; `auto` from what is free.

    `auto`: the cores this process may use (`cpu_budget`: affinity, a cgroup quota, Slurm's
    allocation) less those other work keeps busy right now (`busy_cores_of_others`), at most its
    share when `parallel` jobs or processes run here, at least 1. More threads than free cores is the
    worst case on a busy machine: each parallel region waits for its slowest thread, and a thread
    sharing a core with other work is slow (PyTorch's OpenMP threads also spin while they wait).
    """
    if requested != "auto":
        return ThreadChoice(threads_per_job(requested, available_cores(), parallel))  # type: ignore[arg-type]
    budget, limit = cpu_budget()
    busy = busy_cores_of_others()
    share = max(1, int(budget) // parallel)
    threads = max(1, min(share, math.floor(budget - busy + 0.5)))
    why = f"auto: {limit}" + (f", {busy:.1f} busy with other work" if busy >= 0.5 else ", idle")
    if parallel > 1:
        why += f", {parallel} jobs or processes share them"
    return ThreadChoice(threads, why)


def cpu_budget() -> tuple[float, str]:
    """How many cores this process may keep busy, and what sets it: the CPUs it may run on (taskset,
    cpusets), a cgroup CPU quota (containers, Kubernetes, systemd), Slurm's `--cpus-per-task`."""
    cores = available_cores()
    limits = [(float(cores), f"{cores} core{'s' if cores != 1 else ''}")]
    quota = _cgroup_cpu_quota()
    if quota is not None:
        limits.append((quota, f"a CPU quota of {quota:g} cores"))
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:
        limits.append((float(slurm), f"{slurm} cores from Slurm (SLURM_CPUS_PER_TASK)"))
    return min(limits, key=lambda limit: limit[0])


def busy_cores_of_others(sample_s: float = 0.1) -> float:
    """How many of this process's CPUs other work keeps busy now: /proc/stat's busy time on those CPUs
    over `sample_s`, less this process's own; elsewhere the 1-minute load average less this process."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    before, own_before = _cpu_ticks(cpus), _own_ticks()
    if before is None or own_before is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, load - 1.0)
    time.sleep(sample_s)
    after, own_after = _cpu_ticks(cpus), _own_ticks()
    if after is None or own_after is None:
        return 0.0
    busy, total = after[0] - before[0], after[1] - before[1]
    ticks_per_cpu = total / max(1, len(cpus))
    if ticks_per_cpu <= 0:
        return 0.0
    return max(0.0, (busy - (own_after - own_before)) / ticks_per_cpu)


def _cpu_ticks(cpus: list[int]) -> Optional[tuple[int, int]]:
    """(busy, total) clock ticks so far of `cpus`, from /proc/stat (None where there is none)."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    wanted = {f"cpu{cpu}" for cpu in cpus}
    busy = total = 0
    for line in lines:
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, idle, iowait, irq, softirq, steal = (int(value) for value in fields[1:9])
            busy += user + nice + system + irq + softirq + steal  # steal: a hypervisor gave the core elsewhere
            total += user + nice + system + idle + iowait + irq + softirq + steal
    return (busy, total) if total else None


def _own_ticks() -> Optional[int]:
    """This process's CPU time so far (all its threads), in clock ticks."""
    try:
        fields = Path("/proc/self/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[11]) + int(fields[12])  # utime, stime


def _cgroup_cpu_quota() -> Optional[float]:
    """The cgroup's CPU quota in cores (cgroup v2 cpu.max, v1 cfs_quota_us / cfs_period_us), None if unlimited."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            text = Path(quota_file).read_text().split()
            quota, period = text[0], (Path(period_file).read_text().strip() if period_file else text[1])
        except (OSError, IndexError):
            continue
        if quota in ("max", "-1") or int(period) <= 0:
            return None
        return int(quota) / int(period)
    return None


def gpu_for_job(job_num: int, device_count: int, parallel: int) -> int:
    """Parallel jobs take the GPUs in turn by job number; a job that runs alone uses the first."""
    return job_num % device_count if parallel > 1 and device_count > 1 else 0
