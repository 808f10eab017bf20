"""A run directory written before the package was laid out in wings keeps working.

tests/fixtures/run_9c31c2c was written by commit 9c31c2c (`dlrun model=mlp model.hidden=[16]
scheduler=cosine trainer.epochs=3 dataset.subset=300 trainer.batch_size=32`, stopped by SIGTERM in
epoch 2, then evaluated with that commit's dlrun-eval; tests/fixtures/make_run_9c31c2c.py). Today's
code must give it the same config fingerprint, continue it in place to the weights of an uninterrupted
run, evaluate it to the numbers the old dlrun-eval wrote, and export it. (Equal to float32 round-off, not
bitwise: its first epoch was computed on the machine and thread count that made the fixture.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import read_json
from dlrun.config import validate
from dlrun.run.run_dir import config_fingerprint
from dlrun.tools.evaluate import evaluate_run
from dlrun.tools.export import export_run
from dlrun.train import run

FIXTURE = Path(__file__).parent / "fixtures" / "run_9c31c2c"
OVERRIDES = ("model=mlp", "model.hidden=[16]", "scheduler=cosine", "trainer.epochs=3", "dataset.subset=300",
             "trainer.batch_size=32")


@pytest.fixture
def old_run(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURE, tmp_path / "old_run"))


def test_its_config_has_the_same_fingerprint_today(cfg_for):
    recorded = read_json(FIXTURE / "status.json")["config_fingerprint"]
    assert config_fingerprint(validate(cfg_for(*OVERRIDES))) == recorded


def test_it_continues_in_place_to_the_weights_of_an_uninterrupted_run(cfg_for, old_run, tmp_path):
    resumed = run(cfg_for(*OVERRIDES, f"trainer.resume={old_run}"))
    fresh = run(cfg_for(*OVERRIDES), run_dir=tmp_path / "fresh")
    assert resumed["epochs_completed"] == fresh["epochs_completed"] == 3
    assert resumed["test"] == pytest.approx(fresh["test"], rel=1e-5)
    weights = [torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["model"]
               for folder in (old_run, tmp_path / "fresh")]
    for name, value in weights[1].items():
        torch.testing.assert_close(weights[0][name], value, rtol=1e-5, atol=1e-6)
    status = read_json(old_run / "status.json")
    assert [attempt["outcome"] for attempt in status["attempts"]] == ["interrupted", "completed"]
    assert (status["attempts"][1]["from"]["epoch"], status["attempts"][1]["from"]["step"]) == (2, 2)
    lines = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines if "train/loss" in line] == [1, 2, 3]


def test_it_evaluates_to_what_the_old_dlrun_eval_wrote(old_run):
    (old_folder,) = (FIXTURE / "eval").iterdir()
    written = read_json(old_folder / "metrics.json")
    result = evaluate_run(old_run, [])
    assert result["metrics"] == pytest.approx(written["metrics"], rel=1e-6)
    assert result["per_class"] == written["per_class"]


def test_it_exports_to_torchscript(old_run):
    path = export_run(old_run, "torchscript")
    assert read_json(path.with_name(path.name + ".json"))["check"]["max_abs_difference"] < 1e-4
