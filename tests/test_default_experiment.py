"""The embedded default: LeNet on scikit-learn's digits reaches >= 95 % test accuracy offline."""

from __future__ import annotations

import torch

from conftest import compose_config
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.train import run


def test_default_reaches_95_percent(cfg_for, tmp_path):
    summary = run(cfg_for(), run_dir=tmp_path / "run")
    assert summary["test"]["test/acc"] >= 0.95
    assert summary["epochs_completed"] == 20
    assert summary["device"] == "cpu"


def _splits(seed: int):
    cfg = validate(compose_config(f"seed={seed}"))
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return data.train.split, data.val.split, data.test.split


def test_splits_are_disjoint_and_deterministic_by_seed():
    train, val, test = _splits(0)
    assert (len(train), len(val), len(test)) == (1293, 144, 360)
    rows = [{tuple(x.flatten().tolist()) for x in part.inputs} for part in (train, val, test)]
    # digits holds a few duplicate images, so compare sizes of intersections, not emptiness
    assert len(rows[0] & rows[2]) < 5 and len(rows[1] & rows[2]) < 5
    again = _splits(0)
    assert all(torch.equal(a.inputs, b.inputs) for a, b in zip((train, val, test), again))
    other = _splits(1)
    assert not torch.equal(train.inputs, other[0].inputs)


def test_smoke_preset_trims_data_and_epochs():
    cfg = validate(compose_config("debug=smoke", "trainer.epochs=50"))
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert len(data.train.split) == 128 and len(data.train) == 2  # 128 examples / batch 64
    assert cfg.debug.max_epochs == 1
