"""The installed `dlrun` command end to end: run directory, event files, summary, exit codes."""

from __future__ import annotations

import re
import subprocess
import sys

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import DLRUN, only_run_dir, read_json, run_cli

EPOCH_SCALARS = {"train/loss", "train/acc", "val/loss", "val/acc", "lr", "examples_per_sec"}


# What a run prints, piped: dlrun's own lines and tables, nothing from a library (a font cache, a warning).
DLRUN_LINE = re.compile(r"^(config|changed|device|compile|run directory): |^epoch \d+/\d+  |^tensorboard --logdir "
                        r"|^[┏┃┡│├└]|^ +(model|results) *$")


def test_one_epoch_run_writes_a_self_describing_run_dir(tmp_path):
    # A fresh matplotlib config folder: its first use builds the font cache, which must not be announced.
    result = run_cli("trainer.epochs=1", "name=smoke", cwd=tmp_path, env={"MPLCONFIGDIR": str(tmp_path / "mpl")})
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert [line for line in result.stdout.splitlines() if not DLRUN_LINE.match(line)] == []
    assert "device: cpu, " in result.stdout and "compile: skipped — " in result.stdout
    run_dir = only_run_dir(tmp_path / "outputs")
    assert run_dir.name.endswith("_smoke")
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    assert (run_dir / "dlrun.log").read_text().count("epoch 1/1") == 1
    assert "[dlrun.details][INFO] inputs: prepared once" in (run_dir / "dlrun.log").read_text()  # not on the console
    assert (run_dir / "model_summary.txt").read_text().count("Conv2d") == 2

    assert read_json(run_dir / "status.json")["status"] == "completed"
    summary = read_json(run_dir / "summary.json")
    assert summary["epochs_completed"] == 1 and summary["best_epoch"] == 1
    assert summary["device"] == "cpu"
    assert summary["environment"]["torch"] == torch.__version__
    assert 0 <= summary["test"]["test/acc"] <= 1
    assert summary["duration_s"] > 0

    metrics = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2  # epoch 1, then the test metrics

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert EPOCH_SCALARS | {"test/loss", "test/acc"} <= scalars
    assert [e.step for e in events.Scalars("val/acc")] == [1]
    assert abs(events.Scalars("lr")[0].value - 0.01) < 1e-8  # stored as float32

    for name in ("last.pt", "best.pt"):
        state = torch.load(run_dir / "checkpoints" / name, weights_only=True)
        assert state["epoch"] == 1
    assert f"tensorboard --logdir {run_dir}" in result.stdout


def test_console_names_the_groups_and_changed_values(tmp_path):
    result = run_cli("model=mlp", "optimizer=sgd", "debug=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "config: model=mlp dataset=digits optimizer=sgd" in result.stdout
    assert "changed: model=mlp optimizer=sgd debug=smoke" in result.stdout
    assert "epoch 1/1" in result.stdout  # plain line per epoch when stdout is not a terminal


def test_python_dash_m_and_hydra_flags(tmp_path):
    help_text = subprocess.run([sys.executable, "-m", "dlrun", "--help"], capture_output=True, text=True,
                               cwd=tmp_path)
    assert help_text.returncode == 0
    assert ("model: alexnet, densenet, googlenet, gru, lenet, linear, lstm, mlp, nin, resnet, rnn, softmax, tiny_ssd, "
            "torchvision, torchvision_detection, transformer, vgg, vit") in help_text.stdout
    job = subprocess.run([str(DLRUN), "--cfg", "job", "model=mlp"], capture_output=True, text=True, cwd=tmp_path)
    assert job.returncode == 0
    assert "_target_: dlrun.models.mlp.MLP" in job.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config runs nothing


def test_multirun_runs_each_job(tmp_path):
    result = run_cli("-m", "optimizer=sgd,adam", "debug=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    statuses = sorted((tmp_path / "outputs" / "multirun").glob("*/*/*/status.json"))
    assert [p.parent.name for p in statuses] == ["0_debug=smoke,optimizer=sgd", "1_debug=smoke,optimizer=adam"]
    assert all(read_json(p)["status"] == "completed" for p in statuses)
