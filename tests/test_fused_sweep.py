"""`dlrun -m hydra/launcher=fused` through the real CLI: sweeps trained as stacked models whose jobs are
ordinary runs (complete, evaluable, equal to solo runs), stopped and resumed in place; a member that
diverges; a group that cannot be fused runs job by job."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import DLRUN, read_json, run_cli
from dlrun.run.checkpoint import load_checkpoint
from dlrun.tools.evaluate import evaluate_run
from dlrun.train import run
from test_sweep import job_dirs, sweep_dir_under

FUSED = ("-m", "hydra/launcher=fused")
# Every file a solo job writes (a completed, non-series run).
RUN_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "dlrun.log", "metrics.jsonl",
             "summary.json", "status.json", "data.json", "model_summary.txt", "curves.png",
             "checkpoints/last.pt", "checkpoints/best.pt")


def solo_run(job_dir: Path, root: Path) -> Path:
    """The job's own config run alone in this process, as the basic launcher runs it: its run directory."""
    before = torch.get_num_threads()
    run_dir = root / job_dir.name.partition("_")[0]
    try:
        run(OmegaConf.load(job_dir / ".hydra" / "config.yaml"), run_dir=run_dir)
    finally:
        torch.set_num_threads(before)
    return run_dir


def assert_same_run(fused: Path, solo: Path) -> None:
    """Equal results and, to 1e-5 (relative), equal weights."""
    fused_summary, solo_summary = read_json(fused / "summary.json"), read_json(solo / "summary.json")
    for key in ("best_value", "best_epoch", "epochs_completed"):
        assert fused_summary[key] == pytest.approx(solo_summary[key], rel=1e-6), key
    assert fused_summary["test"] == pytest.approx(solo_summary["test"], rel=1e-5)
    fused_weights = load_checkpoint(fused / "checkpoints" / "last.pt")["model"]
    for name, expected in load_checkpoint(solo / "checkpoints" / "last.pt")["model"].items():
        assert (fused_weights[name] - expected).norm() <= 1e-5 * expected.norm(), name


@pytest.mark.slow
def test_sixteen_mlps_stopped_and_resumed_are_sixteen_ordinary_runs_equal_to_solo_ones(tmp_path):
    """lr x weight decay, 16 jobs as one stacked MLP; SIGTERM mid-run, then sweep.resume finishes it in place.
    Every job directory is complete, evaluable, and holds the run its config makes alone (126 steps)."""
    args = (*FUSED, "model=mlp", "optimizer=sgd", "optimizer.lr=0.05,0.1,0.2,0.4",
            "regularization.weight_decay=0,1e-4,1e-3,1e-2", "trainer.epochs=6", "device.num_threads=1")
    env = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    process = subprocess.Popen([str(DLRUN), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_file(tmp_path, "0_*/checkpoints/last.pt", process)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    sweep_dir = sweep_dir_under(tmp_path)
    stopped = [read_json(d / "status.json") for d in job_dirs(sweep_dir)]
    assert len(stopped) == 16 and {s["status"] for s in stopped} == {"interrupted"}
    assert len({(s["epoch"], s["step"]) for s in stopped}) == 1  # every member saved the same position

    resumed = run_cli(*args, f"sweep.resume={sweep_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "fused launcher: jobs 0-15 as one stacked model (they differ in optimizer.lr, " \
           "regularization.weight_decay)" in resumed.stdout
    dirs = job_dirs(sweep_dir)
    assert [d.name for d in dirs] == [
        f"{n}_device.num_threads=1,model=mlp,optimizer.lr={lr},optimizer=sgd,regularization.weight_decay={wd},"
        "trainer.epochs=6"
        for n, (lr, wd) in enumerate((lr, wd) for lr in ("0.05", "0.1", "0.2", "0.4")
                                     for wd in ("0", "0.0001", "0.001", "0.01"))]
    for job_dir in dirs:
        assert all((job_dir / name).is_file() for name in RUN_FILES), job_dir.name
        status = read_json(job_dir / "status.json")
        assert status["status"] == "completed"
        assert [a["outcome"] for a in status["attempts"]] == ["interrupted", "completed"]
        assert status["attempts"][1]["from"]["checkpoint"].endswith("last.pt")
        epochs = [line for line in (job_dir / "metrics.jsonl").read_text().splitlines() if '"train/loss"' in line]
        assert len(epochs) == 6  # each epoch once, across the two attempts
        assert read_json(job_dir / "summary.json")["fused"] == {"group_size": 16}
    with open(sweep_dir / "summary.csv") as handle:
        assert [row["status"] for row in csv.DictReader(handle)] == ["completed"] * 16

    for job_dir in (dirs[6], dirs[15]):  # the leaderboard's rows and the weights, against solo runs
        assert_same_run(job_dir, solo_run(job_dir, tmp_path / "solo"))
    evaluated = evaluate_run(dirs[6], [])  # dlrun-eval reproduces the job's own test metric
    assert evaluated["metrics"]["test/acc"] == pytest.approx(read_json(dirs[6] / "summary.json")["test"]["test/acc"])


def wait_for_file(root: Path, pattern: str, process: subprocess.Popen, timeout: float = 120) -> Path:
    """The first file of the sweep under `root` that matches `pattern`, once the running `process` wrote it."""
    deadline = time.monotonic() + timeout
    while not (found := list((root / "outputs" / "multirun").glob(f"*/*/{pattern}"))):
        assert process.poll() is None, f"the sweep exited ({process.returncode}): {process.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {pattern}"
        time.sleep(0.005)
    return found[0]


@pytest.mark.slow
def test_lenet_dropout_by_seed_sweep_runs_as_one_stacked_model(tmp_path):
    """8 LeNets (dropout x seed): one stacked model; each seed its own data, initial weights and order."""
    result = run_cli(*FUSED, "regularization.dropout=0,0.2,0.5,0.7", "seed=0,1", "debug=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "fused launcher: jobs 0-7 as one stacked model (they differ in dataset.seed, regularization.dropout, " \
           "seed)" in result.stdout
    assert "fused: 8 jobs as one stacked LeNet on cpu (each seed its own data)" in result.stdout
    sweep_dir = sweep_dir_under(tmp_path)
    summaries = [read_json(d / "summary.json") for d in job_dirs(sweep_dir)]
    assert all((d / name).is_file() for d in job_dirs(sweep_dir) for name in RUN_FILES)
    # LeNet has no dropout sites: the jobs of one seed trained the same network on the same data alike.
    by_seed = [{s["test"]["test/loss"] for s in summaries[seed::2]} for seed in (0, 1)]
    assert [len(values) for values in by_seed] == [1, 1] and by_seed[0] != by_seed[1]
    sweep = read_json(sweep_dir / "summary.json")
    assert sweep["completed"] == 8 and len(sweep["seed_groups"]) == 4


def test_a_diverging_member_is_masked_and_a_group_that_cannot_be_fused_runs_job_by_job(tmp_path):
    result = run_cli(*FUSED, "model=mlp", "optimizer=sgd", "optimizer.lr=0.1,1e30", "trainer.kfold=null,3",
                     "debug=smoke", cwd=tmp_path)
    assert result.returncode == 3, result.stderr  # the first job that did not complete diverged
    assert "fused launcher: jobs 0,2 as one stacked model (they differ in optimizer.lr)" in result.stdout
    assert "fused launcher: jobs 1,3 run one by one: trainer.kfold runs its folds one by one" in result.stdout
    assert "fused: 2 jobs as one stacked MLP" in result.stdout
    statuses = [read_json(d / "status.json") for d in job_dirs(sweep_dir_under(tmp_path))]
    assert [s["status"] for s in statuses] == ["completed", "completed", "diverged", "diverged"]
    assert statuses[2]["error"].startswith("loss became non-finite in epoch 1 at step 1 (of 2); no checkpoint "
                                           "was written before it")
    assert statuses[2]["exit_code"] == 3
    fused_summary = read_json(job_dirs(sweep_dir_under(tmp_path))[0] / "summary.json")
    assert fused_summary["fused"] == {"group_size": 2} and fused_summary["epochs_completed"] == 1
    assert "fused" not in read_json(job_dirs(sweep_dir_under(tmp_path))[1] / "summary.json")  # 3 folds, alone
    assert f"job 2_{job_dirs(sweep_dir_under(tmp_path))[2].name.partition('_')[2]}: diverged" in result.stderr
