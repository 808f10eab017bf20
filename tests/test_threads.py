"""device.num_threads=auto: the cores this process may use, less those other work keeps busy now."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlrun import machine
from dlrun.config import validate
from dlrun.errors import ConfigError
from conftest import compose_config


@pytest.mark.parametrize("budget,busy,parallel,threads", [
    (2.0, 0.0, 1, 2),   # idle: every core
    (2.0, 0.3, 1, 2),   # a little background noise does not cost a core
    (2.0, 1.0, 1, 1),   # one busy process on two cores: one thread
    (2.0, 2.0, 1, 1),   # all busy: still one
    (8.0, 1.2, 1, 7),
    (8.0, 0.0, 2, 4),   # a parallel sweep of 2 jobs: at most its share
    (8.0, 6.0, 2, 2),
])
def test_auto_takes_the_free_cores(monkeypatch, budget, busy, parallel, threads):
    monkeypatch.setattr(machine, "cpu_budget", lambda: (budget, f"{budget:g} cores"))
    monkeypatch.setattr(machine, "busy_cores_of_others", lambda: busy)
    choice = machine.choose_threads("auto", parallel)
    assert choice.threads == threads
    assert choice.why.startswith(f"auto: {budget:g} cores")


def test_an_explicit_count_wins_and_null_keeps_pytorchs_default(monkeypatch):
    monkeypatch.setattr(machine, "busy_cores_of_others", lambda: pytest.fail("auto only"))
    assert machine.choose_threads(3, 1).threads == 3
    assert machine.choose_threads(None, 1).threads is None
    assert machine.choose_threads(None, 2).threads == max(1, machine.available_cores() // 2)


def test_the_budget_is_the_tightest_of_affinity_cgroup_quota_and_slurm(monkeypatch):
    monkeypatch.setattr(machine, "available_cores", lambda: 16)
    monkeypatch.setattr(machine, "_cgroup_cpu_quota", lambda: 6.5)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "4")
    assert machine.cpu_budget() == (4.0, "4 cores from Slurm (SLURM_CPUS_PER_TASK)")
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert machine.cpu_budget() == (6.5, "a CPU quota of 6.5 cores")


def test_a_busy_process_is_seen():
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        assert machine.busy_cores_of_others(sample_s=0.3) >= 0.6
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.parametrize("value", ["abc", "0", "1.5"])
def test_a_bad_thread_count_is_refused(value):
    with pytest.raises(ConfigError, match="device.num_threads"):
        validate(compose_config(f"device.num_threads={value}"))


def test_auto_samples_the_load_once_per_process_and_again_when_asked_otherwise(monkeypatch):
    import torch

    from dlrun.engine import device

    samples = []
    monkeypatch.setattr(machine, "busy_cores_of_others", lambda: samples.append(1) or 0.0)
    monkeypatch.setattr(device, "_chosen_for", None)
    threads = torch.get_num_threads()
    try:
        for _ in range(3):  # the folds of a K-fold run, the members of a fused group
            device.configure_backends(validate(compose_config()).device)
        assert len(samples) == 1
        device.configure_backends(validate(compose_config("device.num_threads=1")).device)
        assert torch.get_num_threads() == 1
        device.configure_backends(validate(compose_config()).device)
        assert len(samples) == 2
    finally:
        torch.set_num_threads(threads)
