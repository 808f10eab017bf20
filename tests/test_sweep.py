"""Multirun sweeps through the real CLI: leaderboard files and table, HPARAMS records, failures, resume, launchers."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import compose_config, read_json, run_cli
from dlrun.train import run

DLRUN_REPORT = Path(sys.executable).with_name("dlrun-report")
SMOKE = "debug=smoke"
CORES = len(os.sched_getaffinity(0))
HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
# Two jobs of the NaN-after-N-steps test model: steps=0 diverges at once, steps=1000 completes.
EXPLODING = ("model._target_=exploding.ExplodesAfter", "+model.steps=0,1000", SMOKE)


def sweep_dir_under(root: Path) -> Path:
    found = sorted((root / "outputs" / "multirun").glob("*/*"))
    assert len(found) == 1, found
    return found[0]


def job_dirs(sweep_dir: Path) -> list[Path]:
    return sorted((d for d in sweep_dir.iterdir() if d.name[0].isdigit()), key=lambda d: int(d.name.partition("_")[0]))


def run_cli_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DLRUN_REPORT), *args], capture_output=True, text=True, timeout=60)


def cpu_threads_in_log(job_dir: Path) -> int:
    line = next(line for line in (job_dir / "dlrun.log").read_text().splitlines() if "device: cpu" in line)
    return int(line.split(", ")[1].split()[0])


@pytest.fixture(scope="module")
def six_jobs(tmp_path_factory):
    """optimizer × weight decay on digits, basic launcher: (CLI result, sweep directory)."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli("-m", "optimizer=sgd,adam", "regularization.weight_decay=0,1e-4,1e-3", SMOKE, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return result, sweep_dir_under(cwd)


@pytest.mark.slow
def test_leaderboard_files_and_table_have_one_row_per_job(six_jobs):
    result, sweep_dir = six_jobs
    combinations = [(opt, wd) for opt in ("sgd", "adam") for wd in ("0", "0.0001", "0.001")]  # as Hydra writes 1e-4
    expected = set(combinations)
    assert [d.name for d in job_dirs(sweep_dir)] == [
        f"{n}_debug=smoke,optimizer={opt},regularization.weight_decay={wd}" for n, (opt, wd) in enumerate(combinations)]

    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6
    assert {(row["overrides"].split()[0].split("=")[1], row["overrides"].split()[1].split("=")[1])
            for row in rows} == expected
    assert all(row["status"] == "completed" and row["monitor"] == "val/acc" and row["epochs"] == "1"
               for row in rows)

    summary = read_json(sweep_dir / "summary.json")
    assert summary["completed"] == 6 and summary["failed"] == 0 and summary["seed_groups"] == []
    bests = [job["best_value"] for job in summary["jobs"]]
    assert bests == sorted(bests, reverse=True)  # the leaderboard puts the best val/acc first
    for job in summary["jobs"]:
        run_summary = read_json(sweep_dir / job["name"] / "summary.json")
        assert job["best_value"] == run_summary["best_value"]
        assert job["test_value"] == run_summary["test"]["test/acc"]
        assert job["duration_s"] == run_summary["duration_s"]

    assert "leaderboard: " in result.stdout and "all jobs: debug=smoke" in result.stdout
    for opt, wd in expected:
        assert f"optimizer={opt} regularization.weight_decay={wd} " in result.stdout
    assert f"tensorboard --logdir {sweep_dir.relative_to(sweep_dir.parents[3])}" in result.stdout


def test_dlrun_report_prints_the_same_table(six_jobs):
    result, sweep_dir = six_jobs
    report = run_cli_report(str(sweep_dir))
    assert report.returncode == 0, report.stderr
    assert report.stdout.count("completed") == 6
    table = report.stdout[report.stdout.index("┏"):]  # below the title, which names the directory as given
    assert table in result.stdout  # the table the sweep printed, line for line

    missing = run_cli_report(str(sweep_dir / "nope"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == f"dlrun-report: error: no such directory: {sweep_dir / 'nope'}"


def test_hparams_and_metrics_are_in_each_runs_own_event_file(six_jobs):
    _, sweep_dir = six_jobs
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(sweep_dir))
    runs.Reload()
    # One run per job, named after its readable job directory (no add_hparams sub-runs).
    assert sorted(runs.Runs()) == sorted(f"{d.name}/tb" for d in job_dirs(sweep_dir))
    for job_dir in job_dirs(sweep_dir):
        assert len(list((job_dir / "tb").iterdir())) == 1  # a single event file
        events = runs.GetAccumulator(f"{job_dir.name}/tb")
        content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
        start = hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG])
        hparams = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
                   for name, value in start.hparams.items()}
        optimizer = job_dir.name.split("optimizer=")[1].split(",")[0]
        weight_decay = float(job_dir.name.split("weight_decay=")[1])
        assert hparams["optimizer"] == optimizer and hparams["model"] == "lenet" and hparams["dataset"] == "digits"
        assert hparams["debug"] == "smoke"
        assert hparams["regularization.weight_decay"] == pytest.approx(weight_decay)
        assert "output_root" not in hparams

        experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
        metric_tags = {info.name.tag for info in experiment.metric_infos}
        assert metric_tags == {"val/best_acc", "test/acc", "test/loss", "run/epochs", "run/duration_s"}
        assert {info.name for info in experiment.hparam_infos} == set(hparams)
        # TensorBoard shows each metric from the run's scalar of that tag: they must carry the results.
        summary = read_json(job_dir / "summary.json")
        final = {tag: events.Scalars(tag)[-1].value for tag in metric_tags}
        assert final["val/best_acc"] == pytest.approx(summary["best_value"])
        assert final["test/acc"] == pytest.approx(summary["test"]["test/acc"])
        assert final["run/epochs"] == 1
        assert final["run/duration_s"] == pytest.approx(summary["duration_s"], rel=1e-4)

        layout = layout_pb2.Layout.FromString(events.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
        charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
        assert charts == {"loss": ["^train/loss$", "^val/loss$"], "acc": ["^train/acc$", "^val/acc$"]}


@pytest.mark.slow
def test_failed_job_does_not_stop_the_sweep_and_resume_runs_only_unfinished_jobs(tmp_path):
    """The jobs run in joblib's worker processes: the exit code comes from their run directories."""
    env = {"PYTHONPATH": HELPERS_DIR}
    first = run_cli("-m", *EXPLODING, "hydra/launcher=joblib", cwd=tmp_path, env=env)
    assert first.returncode == 3, first.stderr  # the diverged job's exit code
    sweep_dir = sweep_dir_under(tmp_path)
    diverged, completed = job_dirs(sweep_dir)
    assert [cpu_threads_in_log(d) for d in (diverged, completed)] == [max(1, CORES // 2)] * 2
    assert first.stderr.splitlines() == [
        f"dlrun: error: job {diverged.name}: diverged: loss became non-finite in epoch 1 at step 0 (of 2); "
        "no checkpoint was written before it. Try a lower optimizer.lr or regularization.grad_clip"]
    summary = read_json(sweep_dir / "summary.json")
    assert [(job["name"], job["status"]) for job in summary["jobs"]] == [
        (completed.name, "completed"), (diverged.name, "diverged")]
    assert "non-finite" in summary["jobs"][1]["error"] and summary["jobs"][1]["exit_code"] == 3
    assert read_json(diverged / "status.json")["status"] == "diverged"

    completed_stamp = (completed / "status.json").stat().st_mtime_ns
    diverged_stamp = (diverged / "status.json").stat().st_mtime_ns
    resumed = run_cli("-m", *EXPLODING, f"sweep.resume={sweep_dir}", cwd=tmp_path, env=env)  # basic launcher
    assert resumed.returncode == 3, resumed.stderr
    assert sweep_dir_under(tmp_path) == sweep_dir  # no second sweep directory
    assert [d.name for d in job_dirs(sweep_dir)] == [diverged.name, completed.name]
    assert resumed.stdout.count("skipped: ") == 1 and completed.name in resumed.stdout
    assert (completed / "status.json").stat().st_mtime_ns == completed_stamp  # not run again
    assert (diverged / "status.json").stat().st_mtime_ns != diverged_stamp  # run again
    assert read_json(sweep_dir / "summary.json")["completed"] == 1


def test_resume_of_a_directory_that_is_not_a_sweep_fails_with_one_line(tmp_path):
    result = run_cli("-m", "optimizer=sgd,adam", SMOKE, f"sweep.resume={tmp_path}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"dlrun: error: sweep.resume={tmp_path} is not a sweep directory (no multirun.yaml in it)")


@pytest.mark.slow
def test_submitit_local_launcher_completes_a_two_job_sweep_sharing_the_cores(tmp_path):
    result = run_cli("-m", "optimizer=sgd,adam", SMOKE, "hydra/launcher=submitit_local", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep_dir = sweep_dir_under(tmp_path)
    summary = read_json(sweep_dir / "summary.json")
    assert sorted(job["name"] for job in summary["jobs"]) == ["0_debug=smoke,optimizer=sgd",
                                                              "1_debug=smoke,optimizer=adam"]
    assert summary["completed"] == 2
    assert [cpu_threads_in_log(d) for d in job_dirs(sweep_dir)] == [max(1, CORES // 2)] * 2  # 2 jobs at once



@pytest.mark.slow
def test_a_submitit_job_with_two_tasks_is_one_run_on_two_processes(tmp_path):
    # hydra.launcher.nodes and tasks_per_node make each job a distributed run (dlrun.distributed);
    # submitit_local runs the same job code as submitit_slurm, with its own task variables.
    overrides = ("model=mlp", "model.hidden=[32]", "trainer.batch_size=16", "dataset.subset=97", "trainer.epochs=2",
                 "device=cpu", "device.num_threads=1")
    result = run_cli("-m", *overrides, "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [job_dir] = job_dirs(sweep_dir_under(tmp_path))
    summary = read_json(job_dir / "summary.json")
    assert (summary["world_size"], summary["batch_size_per_rank"]) == (2, 8)
    assert (job_dir / "dlrun.log").read_text().count("epoch 2/2") == 1  # the second task logs nothing

    one_process = run(compose_config(f"output_root={tmp_path / 'one'}", *overrides), run_dir=tmp_path / "one")
    assert summary["test"] == pytest.approx(one_process["test"], abs=1e-5)
    two, one = (torch.load(d / "checkpoints" / "last.pt", weights_only=True)["model"] for d in (job_dir, tmp_path / "one"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5)


def test_optuna_sweeper_searches_on_the_validation_metric(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra: pip install 'dlrun[optuna]'")
    result = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.direction=maximize",
                     "optimizer.lr=interval(0.001,0.1)", SMOKE, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep_dir = sweep_dir_under(tmp_path)
    jobs = read_json(sweep_dir / "summary.json")["jobs"]
    assert len(jobs) == 2 and all(job["status"] == "completed" for job in jobs)
    best = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    assert best.best_value == pytest.approx(max(job["best_value"] for job in jobs))  # what each job returned
