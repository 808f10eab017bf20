"""Pictures without a server: the validation curves of a sweep, with mean ± std bands for seed groups."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from dlrun.run.leaderboard import read_sweep
from dlrun.tools.sweep_report import sweep_panels

DLRUN_REPORT = Path(sys.executable).with_name("dlrun-report")
# val/acc per epoch of four jobs: lr=0.1 with seeds 0 and 1 (a seed group), lr=0.5 with seed 0, and one that stopped.
JOBS = {
    "0_lr=0.1,seed=0": (["lr=0.1", "seed=0"], [0.5, 0.7, 0.8], "completed"),
    "1_lr=0.1,seed=1": (["lr=0.1", "seed=1"], [0.3, 0.6, 0.9], "completed"),
    "2_lr=0.5,seed=0": (["lr=0.5", "seed=0"], [0.6, 0.65, 0.7], "completed"),
    "3_lr=0.9,seed=0": (["lr=0.9", "seed=0"], [0.2], "interrupted"),
}


def write_job(folder: Path, number: int, overrides: list[str], accuracies: list[float], status: str) -> None:
    """What a sweep job leaves behind, as far as the leaderboard and the curves read it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "hydra.yaml").write_text(json.dumps({"hydra": {
        "job": {"num": number, "config": {"override_dirname": {"exclude_keys": []}}},
        "overrides": {"task": overrides}}}))
    (folder / "status.json").write_text(json.dumps({"status": status}))
    lines = [{"epoch": epoch, "train/loss": 1.0, "val/loss": 1 - acc, "val/acc": acc}
             for epoch, acc in enumerate(accuracies, 1)]
    lines.append({"epoch": len(accuracies), "test/acc": 0.5, "test/loss": 0.5})  # the final line: not a curve
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if status == "completed":
        (folder / "summary.json").write_text(json.dumps({
            "monitor": "val/acc", "mode": "max", "best_value": max(accuracies), "test": {"test/acc": 0.5},
            "epochs_completed": len(accuracies), "duration_s": 1.0}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    for number, (name, (overrides, accuracies, status)) in enumerate(JOBS.items()):
        write_job(tmp_path / name, number, overrides, accuracies, status)
    return tmp_path


def test_seed_groups_are_drawn_as_mean_and_std(sweep):
    loss, accuracy = sweep_panels(read_sweep(sweep))
    assert (loss.title, accuracy.title) == ("val/loss", "val/acc")
    group, single, stopped = accuracy.curves
    assert group.label == "lr=0.1 (mean ± std, 2 seeds)" and list(group.x) == [1, 2, 3]
    assert group.y == pytest.approx([0.4, 0.65, 0.85])
    assert group.spread == pytest.approx([statistics.stdev(pair) for pair in ((0.5, 0.3), (0.7, 0.6), (0.8, 0.9))])
    assert single.label == "2: lr=0.5 seed=0" and list(single.y) == [0.6, 0.65, 0.7] and single.spread is None
    assert stopped.label == "3: lr=0.9 seed=0 (interrupted)" and list(stopped.x) == [1]
    assert loss.curves[0].y == pytest.approx([0.6, 0.35, 0.15])


def test_dlrun_report_plot_writes_a_png(sweep):
    result = subprocess.run([str(DLRUN_REPORT), str(sweep), "--plot"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"validation curves: {sweep / 'val_curves.png'}" in result.stdout
    with Image.open(sweep / "val_curves.png") as image:
        assert image.format == "PNG" and image.size[0] > image.size[1]
        image.verify()
