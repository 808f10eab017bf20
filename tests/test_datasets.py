"""Every conf/dataset/*.yaml trains from the CLI's config on files the test writes; splits are sound."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import compose_config, read_json
from dataset_files import dataset_overrides
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.train import run

DATASETS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "dataset").glob("*.yaml"))
HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides


@pytest.fixture
def overrides(tmp_path):
    return dataset_overrides(tmp_path)


def test_every_dataset_has_offline_overrides(tmp_path):
    assert sorted(dataset_overrides(tmp_path)) == DATASETS


@pytest.mark.parametrize("name", DATASETS)
def test_dataset_option_trains_and_tests(name, overrides, cfg_for, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)  # tiny_rnn for the language-model datasets
    cfg = cfg_for(f"dataset={name}", *overrides[name], "debug=smoke", "trainer.batch_size=16")
    summary = run(cfg, run_dir=tmp_path / "run")
    assert read_json(tmp_path / "run" / "status.json")["status"] == "completed"
    metric = summary["monitor"].split("/")[1]
    assert math.isfinite(summary["test"][f"test/{metric}"])
    assert summary["model"]["params"] > 0


def _splits(name: str, overrides: dict[str, list[str]], seed: int):
    cfg = validate(compose_config(f"dataset={name}", *overrides[name], f"seed={seed}"))
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(seed))
    return [loader.split for loader in (data.train, data.val, data.test)]


@pytest.mark.parametrize("name", ["fashion_mnist", "csv", "synthetic_linear"])
def test_splits_are_disjoint_and_deterministic_by_seed(name, overrides):
    parts = _splits(name, overrides, seed=0)
    rows = [{(*x.flatten().tolist(), y.item()) for x, y in zip(part.inputs, part.targets)} for part in parts]
    assert all(len(r) == len(p) for r, p in zip(rows, parts))  # these examples are all distinct
    assert not rows[0] & rows[1] and not rows[0] & rows[2] and not rows[1] & rows[2]
    again = _splits(name, overrides, seed=0)
    assert all(torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets) for a, b in zip(parts, again))
    other = _splits(name, overrides, seed=1)
    assert not torch.equal(parts[0].inputs, other[0].inputs)
