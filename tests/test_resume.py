"""Checkpoints continue a run exactly, in its own directory; a bad resume target is an error, never a fresh start."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import read_json, untimed
from dlrun.errors import CheckpointError
from dlrun.train import run

# Dropout and shuffling both draw random numbers, so an exact match needs every RNG restored.
SETUP = ("model=mlp", "regularization.dropout=0.3", "optimizer=sgd", "trainer.batch_size=32")


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def metric_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_plus_two_epochs_equal_four_bitwise_in_one_run_directory(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=4"), run_dir=tmp_path / "straight")
    run(cfg_for(*SETUP, "trainer.epochs=2"), run_dir=tmp_path / "first")
    summary = run(cfg_for(*SETUP, "trainer.epochs=4", f"trainer.resume={tmp_path / 'first'}"),
                  run_dir=tmp_path / "second")

    assert not (tmp_path / "second").exists()  # continued in place
    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "first")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    assert summary["epochs_completed"] == 4
    assert summary["resumed_from"] == str(tmp_path / "first" / "checkpoints" / "last.pt")
    assert summary["test"] == read_json(tmp_path / "straight" / "summary.json")["test"]
    # One history: epochs 1-4 once each (the first run's test line dropped), then the test line.
    lines = metric_lines(tmp_path / "first")
    assert [line["epoch"] for line in lines] == [1, 2, 3, 4, 4] and "test/acc" in lines[-1]
    assert [untimed(line) for line in lines] == [untimed(line)
                                                         for line in metric_lines(tmp_path / "straight")]
    status = read_json(tmp_path / "first" / "status.json")
    assert status["status"] == "completed"
    assert [attempt["outcome"] for attempt in status["attempts"]] == ["completed", "completed"]
    assert status["attempts"][1]["from"]["epoch"] == 3 and status["attempts"][1]["from"]["step"] == 0


def test_resume_auto_continues_the_latest_run_of_the_same_config_in_place(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=1"), run_dir=tmp_path / "outputs" / "a")
    run(cfg_for(*SETUP, "trainer.epochs=1", "seed=5"), run_dir=tmp_path / "outputs" / "other-config")
    summary = run(cfg_for(*SETUP, "trainer.epochs=2", "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "b")
    assert summary["resumed_from"] == str(tmp_path / "outputs" / "a" / "checkpoints" / "last.pt")
    assert summary["epochs_completed"] == 2
    assert not (tmp_path / "outputs" / "b").exists()
    assert read_json(tmp_path / "outputs" / "a" / "summary.json")["epochs_completed"] == 2


def test_resume_auto_without_earlier_run_is_an_error(cfg_for, tmp_path):
    (tmp_path / "outputs" / "x").mkdir(parents=True)  # as Hydra makes it before the run starts
    with pytest.raises(CheckpointError, match="found no earlier run of this config"):
        run(cfg_for(*SETUP, "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "x")
    assert read_json(tmp_path / "outputs" / "x" / "status.json")["status"] == "failed"


def test_missing_and_corrupt_checkpoints_are_errors(cfg_for, tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        run(cfg_for(*SETUP, f"trainer.resume={tmp_path / 'nowhere'}"), run_dir=tmp_path / "r1")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="unreadable or corrupt"):
        run(cfg_for(*SETUP, f"trainer.resume={corrupt}"), run_dir=tmp_path / "r2")


def test_checkpoint_is_weights_only_and_complete(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=1"), run_dir=tmp_path / "run")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "epoch", "global_step", "position", "best", "rng", "config",
            "metrics_lines", "stopped_early", "elapsed_s"} <= state.keys()
    assert {"python", "numpy", "torch", "cuda", "shuffle"} <= state["rng"].keys()
    assert state["config"]["model"]["_target_"] == "dlrun.models.mlp.MLP"
    assert state["best"]["metric"] == "val/acc"
    assert state["position"] is None and state["epoch"] == 1 and state["metrics_lines"] == 1
    assert state["global_step"] == 41  # one epoch: 41 batches of 32 from the digits training split
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))  # no temporary file left behind


def test_resuming_a_finished_run_reports_it_and_leaves_it_as_it_was(cfg_for, tmp_path):
    first = run(cfg_for(*SETUP, "trainer.epochs=2"), run_dir=tmp_path / "first")
    stamp = (tmp_path / "first" / "checkpoints" / "last.pt").stat().st_mtime_ns
    again = run(cfg_for(*SETUP, "trainer.epochs=2", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "again")
    assert again["epochs_completed"] == 2
    assert again["final"] == first["final"] and again["test"] == first["test"]
    assert (tmp_path / "first" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    assert not (tmp_path / "again").exists()


def test_a_checkpoint_file_starts_a_new_run_that_continues_from_it(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=3"), run_dir=tmp_path / "straight")
    run(cfg_for(*SETUP, "trainer.epochs=2"), run_dir=tmp_path / "parent")
    source = tmp_path / "parent" / "checkpoints" / "last.pt"
    summary = run(cfg_for(*SETUP, "trainer.epochs=3", f"trainer.resume={source}"), run_dir=tmp_path / "branch")
    assert summary["resumed_from"] == str(source) and summary["epochs_completed"] == 3
    assert [line["epoch"] for line in metric_lines(tmp_path / "branch")] == [3, 3]  # its own history starts at 3
    assert read_json(tmp_path / "parent" / "summary.json")["epochs_completed"] == 2  # the parent is untouched
    straight, branch = weights(tmp_path / "straight"), weights(tmp_path / "branch")
    assert all(torch.equal(straight[name], branch[name]) for name in straight)


def test_resuming_a_run_dir_with_another_config_names_the_difference(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=1"), run_dir=tmp_path / "first")
    with pytest.raises(CheckpointError) as error:
        run(cfg_for(*SETUP, "optimizer.lr=0.5", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "x")
    message = str(error.value)
    assert "that run has another config (optimizer.lr: 0.1 → 0.5)" in message
    assert f"trainer.resume={tmp_path / 'first' / 'checkpoints' / 'last.pt'}" in message
