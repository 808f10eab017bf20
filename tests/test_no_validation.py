"""dataset.val_fraction=0: every example trains; the training metric picks the best epoch."""

from __future__ import annotations

import json

from dlrun.train import run


def test_training_metric_monitors_when_there_is_no_validation_split(cfg_for, tmp_path):
    summary = run(cfg_for("dataset=synthetic_linear", "model=mlp", "model.hidden=[]", "optimizer=sgd",
                          "optimizer.lr=0.03", "dataset.val_fraction=0", "trainer.epochs=3"), run_dir=tmp_path / "r")
    assert summary["monitor"] == "train/rmse"
    epochs = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert not any(key.startswith("val/") for line in epochs[:3] for key in line)
    assert summary["best_value"] == min(line["train/rmse"] for line in epochs[:3])
    assert (tmp_path / "r" / "checkpoints" / "best.pt").exists()
