"""A non-finite loss stops the run: status diverged, exit code 3, last.pt not poisoned."""

from __future__ import annotations

import pytest
import torch

from conftest import HELPERS_DIR, read_json, run_cli
from dlrun.errors import TrainingDiverged
from dlrun.train import run

# 8 batches of 32 per epoch (256 training examples); NaN from the 12th step on: epoch 2, step 3.
EXPLODING = ("model._target_=exploding.ExplodesAfter", "+model.steps=11", "trainer.batch_size=32",
             "dataset.subset=256", "trainer.epochs=3")


def test_divergence_stops_at_the_epoch_with_the_first_bad_step(cfg_for, tmp_path):
    with pytest.raises(TrainingDiverged, match="non-finite in epoch 2 at step 3"):
        run(cfg_for(*EXPLODING), run_dir=tmp_path / "run")
    status = read_json(tmp_path / "run" / "status.json")
    assert status["status"] == "diverged" and "epoch 2 at step 3" in status["error"]
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in last["model"].values() if t.is_floating_point())


def test_cli_exit_code_for_divergence(tmp_path):
    result = run_cli(*EXPLODING, cwd=tmp_path, env={"PYTHONPATH": HELPERS_DIR})
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().splitlines() == [
        "dlrun: error: loss became non-finite in epoch 2 at step 3 (of 8); last.pt keeps the previous epoch. "
        "Try a lower optimizer.lr or regularization.grad_clip"]
