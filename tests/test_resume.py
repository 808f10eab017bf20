"""Checkpoints continue a run exactly; a bad resume target is an error, never a fresh start."""

from __future__ import annotations

import pytest
import torch

from conftest import read_json
from dlrun.errors import CheckpointError
from dlrun.train import run

# Dropout and shuffling both draw random numbers, so an exact match needs every RNG restored.
SETUP = ("model=mlp", "regularization.dropout=0.3", "optimizer=sgd", "trainer.batch_size=32")


def weights(run_dir):
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_two_plus_two_epochs_equal_four_bitwise(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=4"), run_dir=tmp_path / "straight")
    run(cfg_for(*SETUP, "trainer.epochs=2"), run_dir=tmp_path / "first")
    run(cfg_for(*SETUP, "trainer.epochs=4", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "second")

    straight, resumed = weights(tmp_path / "straight"), weights(tmp_path / "second")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    summary = read_json(tmp_path / "second" / "summary.json")
    assert summary["epochs_completed"] == 4
    assert summary["resumed_from"].endswith("first/checkpoints/last.pt")
    straight_test = read_json(tmp_path / "straight" / "summary.json")["test"]
    assert summary["test"] == straight_test


def test_resume_auto_finds_the_latest_run_of_the_same_config(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "trainer.epochs=1"), run_dir=tmp_path / "outputs" / "a")
    run(cfg_for(*SETUP, "trainer.epochs=1", "seed=5"), run_dir=tmp_path / "outputs" / "other-config")
    summary = run(cfg_for(*SETUP, "trainer.epochs=2", "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "b")
    assert summary["resumed_from"] == str(tmp_path / "outputs" / "a" / "checkpoints" / "last.pt")
    assert summary["epochs_completed"] == 2


def test_resume_auto_without_earlier_run_is_an_error(cfg_for, tmp_path):
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
    assert {"model", "optimizer", "scheduler", "epoch", "best", "rng", "config"} <= state.keys()
    assert {"python", "numpy", "torch", "cuda", "shuffle"} <= state["rng"].keys()
    assert state["config"]["model"]["_target_"] == "dlrun.models.mlp.MLP"
    assert state["best"]["metric"] == "val/acc"
    assert not list((tmp_path / "run" / "checkpoints").glob(".*tmp"))  # no temporary file left behind


def test_resuming_a_finished_run_reports_it_and_keeps_a_complete_run_dir(cfg_for, tmp_path):
    first = run(cfg_for(*SETUP, "trainer.epochs=2"), run_dir=tmp_path / "first")
    again = run(cfg_for(*SETUP, "trainer.epochs=2", f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "again")
    assert again["epochs_completed"] == 2
    assert again["final"] == first["final"] and again["test"] == first["test"]
    copied, original = weights(tmp_path / "again"), weights(tmp_path / "first")  # last.pt carried over
    assert all(torch.equal(copied[name], original[name]) for name in original)
