"""The sweep logic that needs no training: run names, thread and GPU shares, seed groups, exit codes."""

from __future__ import annotations

import os

import pytest
from omegaconf import OmegaConf

from dlrun.atomic import write_json
from dlrun.config.resolvers import MAX_NAME, safe_name
from dlrun.machine import gpu_for_job, threads_per_job
from dlrun.run.leaderboard import parallel_jobs_of, read_sweep


def test_run_names_are_filesystem_safe_and_stay_distinct():
    assert safe_name("+experiment=d2l/lenet,optimizer=adam") == "+experiment=d2l-lenet,optimizer=adam"
    assert safe_name("name='a b'") == "name=_a_b_"
    long_a = ",".join(f"model.widths.{i}={i}" for i in range(40))
    long_b = long_a[:-1] + "x"
    assert len(safe_name(long_a)) == MAX_NAME and safe_name(long_a) != safe_name(long_b)
    assert safe_name(long_a).startswith("model.widths.0=0,")


def test_each_parallel_job_gets_its_share_of_cores_and_a_gpu_in_turn():
    assert threads_per_job(None, cores=16, parallel=1) is None  # one job: PyTorch's default
    assert threads_per_job(None, cores=16, parallel=4) == 4
    assert threads_per_job(None, cores=2, parallel=3) == 1
    assert threads_per_job(6, cores=16, parallel=4) == 6  # device.num_threads wins
    assert [gpu_for_job(job, device_count=4, parallel=4) for job in range(6)] == [0, 1, 2, 3, 0, 1]
    assert [gpu_for_job(job, device_count=4, parallel=1) for job in range(3)] == [0, 0, 0]
    assert gpu_for_job(5, device_count=1, parallel=8) == 0


def hydra_node(launcher: dict, overrides: list[str], sweeper: dict | None = None):
    return OmegaConf.create({"launcher": launcher, "overrides": {"task": overrides},
                             "sweeper": sweeper or {"max_batch_size": None}})


SIX_JOBS = ["optimizer=sgd,adam", "regularization.weight_decay=0,1e-4,1e-3", "debug=smoke"]
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
SUBMITIT = "hydra_plugins.hydra_submitit_launcher.submitit_launcher."


def test_parallel_jobs_follow_the_launcher_and_the_sweep_size():
    cpus = os.cpu_count()
    assert parallel_jobs_of(hydra_node({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"},
                                       SIX_JOBS)) == 1
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 4}, SIX_JOBS)) == 4
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, SIX_JOBS)) == 6  # only 6 jobs exist
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": -1}, SIX_JOBS)) == min(cpus, 6)
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, ["seed=range(0,3)"])) == 3
    assert parallel_jobs_of(hydra_node({"_target_": SUBMITIT + "LocalLauncher"}, SIX_JOBS)) == 6
    assert parallel_jobs_of(hydra_node({"_target_": SUBMITIT + "SlurmLauncher"}, SIX_JOBS)) == 1
    optuna = {"n_jobs": 2, "n_trials": 20}
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, ["optimizer.lr=interval(0.001,0.1)"],
                                       optuna)) == 2


def test_a_recipes_sweeper_params_count_with_the_command_line():
    recipe = {"max_batch_size": None, "params": {"optimizer": "sgd,momentum,adam,adamw"}}
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, ["+experiment=d2l/optimizers"], recipe)) == 4
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 16}, ["seed=0,1", "debug=smoke"], recipe)) == 8
    # A command-line value for a key the recipe sweeps replaces the recipe's, as in Hydra's basic sweeper.
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, ["optimizer=sgd,adam"], recipe)) == 2
    assert parallel_jobs_of(hydra_node({"_target_": JOBLIB, "n_jobs": 8}, ["optimizer=adam"], recipe)) == 1


def fake_job(sweep_dir, num: int, overrides: list[str], status: str, best=None, test=None):
    job_dir = sweep_dir / f"{num}_{','.join(overrides)}"
    (job_dir / ".hydra").mkdir(parents=True)
    hydra = {"hydra": {"job": {"num": num, "config": {"override_dirname": {"exclude_keys": ["output_root"]}}},
                       "overrides": {"task": overrides + ["output_root=/tmp/x"]}}}
    OmegaConf.save(OmegaConf.create(hydra), job_dir / ".hydra" / "hydra.yaml")
    fields = {"error": "boom", "exit_code": 3} if status != "completed" else {}
    write_json(job_dir / "status.json", {"status": status, **fields})
    if status == "completed":
        write_json(job_dir / "summary.json", {"monitor": "val/acc", "mode": "max", "best_value": best,
                                              "test": {"test/acc": test}, "epochs_completed": 2,
                                              "duration_s": 1.5})


def test_seeds_are_grouped_into_mean_and_std_and_failures_set_the_exit_code(tmp_path):
    fake_job(tmp_path, 0, ["dropout=0", "seed=0"], "completed", 0.80, 0.70)
    fake_job(tmp_path, 1, ["dropout=0", "seed=1"], "completed", 0.90, 0.74)
    fake_job(tmp_path, 2, ["dropout=0.5", "seed=0"], "completed", 0.95, 0.90)
    fake_job(tmp_path, 3, ["dropout=0.5", "seed=1"], "diverged")
    fake_job(tmp_path, 4, ["dropout=0.5", "seed=2"], "completed", 0.85, 0.80)
    (tmp_path / "5_dropout=0.9,seed=0" / ".hydra").mkdir(parents=True)  # started, never wrote status.json

    summary = read_sweep(tmp_path)
    assert [job.job for job in summary.jobs] == [2, 1, 4, 0, 3, 5]  # best val/acc first, then the rest
    assert summary.jobs[0].overrides == ["dropout=0.5", "seed=0"]  # output_root is not compared
    assert [(job.job, job.status) for job in summary.failed] == [(3, "diverged"), (5, "missing")]
    assert summary.exit_code == 3

    groups = {tuple(group.overrides): group for group in summary.seed_groups}
    assert set(groups) == {("dropout=0",), ("dropout=0.5",)}
    plain, dropout = groups[("dropout=0",)], groups[("dropout=0.5",)]
    assert (plain.jobs, plain.completed) == ([0, 1], 2)
    assert plain.best_mean == pytest.approx(0.85) and plain.best_std == pytest.approx(0.0707107, rel=1e-5)
    assert (dropout.jobs, dropout.completed) == ([2, 3, 4], 2)
    assert dropout.test_mean == pytest.approx(0.85) and dropout.test_std == pytest.approx(0.0707107, rel=1e-5)


def test_a_job_without_a_test_split_says_so_in_the_leaderboard(tmp_path):
    from rich.console import Console

    from dlrun.run.leaderboard import show

    fake_job(tmp_path, 0, ["lr=1"], "completed", 0.8, 0.7)
    fake_job(tmp_path, 1, ["lr=2"], "completed", 0.9)
    summary = tmp_path / "1_lr=2" / "summary.json"
    write_json(summary, {**OmegaConf.to_container(OmegaConf.load(summary)), "test": {}})  # dataset.test_fraction=0
    jobs = {job.job: job for job in read_sweep(tmp_path).jobs}
    assert (jobs[0].test_metric, jobs[0].test_value) == ("test/acc", 0.7)
    assert (jobs[1].test_metric, jobs[1].test_value) == (None, None)
    console = Console(width=200, record=True)
    show(read_sweep(tmp_path), console)
    table = console.export_text()
    assert "no test split" in table and "0.7000" in table
