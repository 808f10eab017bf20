"""CSV datasets: d2l's house-price preprocessing, shapes known at config time, log-RMSE, k-fold."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import compose_config, read_json, run_cli
from dataset_files import write_house_csv
from dlrun.config import validate
from dlrun.data.splits import TensorSplit, fold_split
from dlrun.data.tabular import TableEncoder, encode_csv, read_csv
from dlrun.errors import DataError
from dlrun.tasks import Regression
from dlrun.train import run


def test_numeric_standardized_missing_filled_categoricals_one_hot(tmp_path):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    table = encode_csv(str(path), "SalePrice", "regression", ("Id",))
    assert table.feature_names == ("LotArea", "Street=Grvl", "Street=Pave", "Street=<missing>", "Zero",
                                   "Quality=high", "Quality=low", "Quality=mid", "Quality=<missing>")
    area = table.features[:, 0]
    present = np.array([n % 7 != 3 for n in range(40)])
    assert abs(area[present].mean()) < 1e-5 and abs(area[present].std() - 1) < 1e-5
    assert (area[~present] == 0).all()  # missing → the mean
    street = table.features[:, 1:4]
    assert (street.sum(axis=1) == 1).all() and street[4].tolist() == [0, 0, 1]  # row 4 had "NA"
    assert (table.features[:, 4] == 0).all()  # a constant column stays finite
    assert (table.features[:, 8] == 0).all()  # d2l's dummy_na=True: a <missing> column even when nothing is missing
    assert table.targets[1] == 100000 + 2500 + 10000


def test_shapes_reach_the_model_by_interpolation(tmp_path):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    cfg = validate(compose_config("dataset=csv", "model=mlp", f"dataset.path={path}", "dataset.target=SalePrice"))
    assert list(cfg.model.input_shape) == [10] and cfg.model.num_outputs == 1  # Id kept as a numeric feature
    cfg = validate(compose_config("dataset=csv", "model=mlp", f"dataset.path={path}", "dataset.target=Quality",
                                  "dataset.task=classification", "dataset.drop=[Id]"))
    assert list(cfg.model.input_shape) == [6] and cfg.model.num_outputs == 3
    with pytest.raises(DataError, match="target 'Street' is missing on line 6 \\(8 rows in all\\)"):
        validate(compose_config("dataset=csv", f"dataset.path={path}", "dataset.target=Street",
                                "dataset.task=classification"))


def test_csv_classification_trains(cfg_for, tmp_path):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    summary = run(cfg_for("dataset=csv", "model=mlp", f"dataset.path={path}", "dataset.target=Quality",
                          "dataset.task=classification", "dataset.drop=[Id]", "trainer.epochs=2"),
                  run_dir=tmp_path / "run")
    assert summary["monitor"] == "val/acc" and 0 <= summary["test"]["test/acc"] <= 1


def test_log_rmse_is_d2ls():
    task = Regression(log_target=True)
    outputs, targets = torch.tensor([[0.5], [200.0]]), torch.tensor([10.0, 100.0])
    stats = task.batch_stats(outputs, targets, task.loss(outputs, targets))
    expected = math.sqrt(((math.log(1) - math.log(10)) ** 2 + (math.log(200) - math.log(100)) ** 2) / 2)
    assert task.metrics(stats.tolist())["log_rmse"] == pytest.approx(expected, rel=1e-6)
    assert task.metric == "log_rmse" and Regression().metric == "rmse"


def test_folds_partition_the_data():
    split = TensorSplit(torch.arange(10.0), torch.arange(10))
    vals = [fold_split(split, k, 3, seed=0)[1].targets.tolist() for k in range(3)]
    assert sorted(sum(vals, [])) == list(range(10)) and [len(v) for v in vals] == [4, 3, 3]
    rest, val = fold_split(split, 1, 3, seed=0)
    assert not set(rest.targets.tolist()) & set(val.targets.tolist())
    assert vals == [fold_split(split, k, 3, seed=0)[1].targets.tolist() for k in range(3)]


def test_kfold_reports_every_fold_and_mean_std(cfg_for, tmp_path):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    cfg = cfg_for("dataset=csv", f"dataset.path={path}", "dataset.target=SalePrice", "dataset.drop=[Id]",
                  "dataset.log_target=true", "model=mlp", "trainer.kfold=3", "trainer.epochs=2",
                  "trainer.batch_size=8")
    summary = run(cfg, run_dir=tmp_path / "run")
    saved = read_json(tmp_path / "run" / "summary.json")
    assert saved["kfold"] == 3 and [row["fold"] for row in saved["folds"]] == [0, 1, 2]
    values = [row["val/log_rmse"] for row in saved["folds"]]
    assert saved["mean"]["val/log_rmse"] == pytest.approx(np.mean(values))
    assert saved["std"]["val/log_rmse"] == pytest.approx(np.std(values, ddof=1))
    assert saved["monitor"] == "val/log_rmse" and summary["folds"] == saved["folds"]
    for fold in range(3):
        assert (tmp_path / "run" / f"fold_{fold}" / "checkpoints" / "best.pt").exists()
    assert read_json(tmp_path / "run" / "status.json")["status"] == "completed"
    # The same keys as a single run's summary, so sweeps and the CLI treat it like any run.
    assert saved["best_value"] == saved["mean"]["val/log_rmse"] and saved["epochs_completed"] == 2
    assert saved["test"] == {k: v for k, v in saved["mean"].items() if k.startswith("test/")}


def test_kfold_from_the_cli_exits_zero(tmp_path):
    result = run_cli("dataset=diabetes", "model=mlp", "trainer.kfold=3", "debug=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "3-fold cross-validation" in result.stdout


def test_the_fitted_encoder_applies_unchanged_to_new_rows(tmp_path):
    path = tmp_path / "house.csv"
    write_house_csv(path)
    table = encode_csv(str(path), "SalePrice", "regression", ("Id",))
    encoder = TableEncoder.from_state(json.loads(json.dumps(table.encoder.state_dict())))  # as saved in data.json
    assert encoder == table.encoder and encoder.feature_names == table.feature_names
    header, rows = read_csv(path)
    assert np.array_equal(encoder.transform(header, rows, "house.csv"), table.features)

    # New rows: columns in another order, no target, an unseen and a missing category, a missing number.
    new_header = ["Quality", "Zero", "Street", "LotArea"]
    features = encoder.transform(new_header, [["mid", "0", "Dirt", "1000"], ["NA", "0", "Pave", ""]], "new.csv")
    names = list(encoder.feature_names)
    first, second = (dict(zip(names, row)) for row in features)
    assert first["Street=<missing>"] == 1 and first["Street=Grvl"] == first["Street=Pave"] == 0  # unseen → missing
    assert first["Quality=mid"] == 1 and second["Quality=<missing>"] == 1 and second["Street=Pave"] == 1
    assert first["LotArea"] == pytest.approx(table.features[0, 0]) and second["LotArea"] == 0  # training's statistics

    with pytest.raises(DataError, match=r"^new.csv has no column 'Street'; the model reads the columns LotArea, "
                                        r"Street, Zero, Quality$"):
        encoder.transform(["LotArea", "Zero", "Quality"], [["1", "0", "mid"]], "new.csv")
    with pytest.raises(DataError, match=r"new.csv line 3: column 'LotArea' holds 'big', not a number"):
        encoder.transform(new_header, [["mid", "0", "Pave", "1"], ["mid", "0", "Pave", "big"]], "new.csv")
