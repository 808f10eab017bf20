"""Any target from any source: image regression against a plain PyTorch loop and against a CSV of the same pixels,
binary and multi-label AUC, a Kaggle test.csv of image paths predicted in its order."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from conftest import read_json
from dlrun.data.build import build_data
from dlrun.data.splits import TensorSplit, split_off
from dlrun.tools.evaluate import evaluate_run
from dlrun.tools.export import export_run
from dlrun.tools.loaded_run import load_run
from dlrun.tools.predict import main as predict
from dlrun.train import run
from score_parts import score_part
from target_files import TAGS, digit_tags, write_digit_files

COMMON = ("model=mlp", "model.hidden=[64]", "optimizer=adam", "optimizer.lr=0.01", "trainer.batch_size=64",
          "device.num_threads=1", "seed=0")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """All 1,797 bundled digits as 8x8 PNGs with labels.csv (score, tags, yes/no) and pixels.csv; read-only."""
    root = tmp_path_factory.mktemp("digit_files")
    write_digit_files(root)
    return root


def folder(root: Path, *overrides: str) -> tuple[str, ...]:
    return ("dataset=image_folder", f"dataset.root={root}", "dataset.labels_csv=labels.csv", "dataset.num_workers=0",
            *overrides)


def plain_pytorch_rmse(pixels: np.ndarray, scores: np.ndarray, epochs: int) -> float:
    """The test RMSE of the loop a careful PyTorch user writes: the same split, MLP and optimizer, MSE on the scores
    standardised with the training split's mean and std."""
    torch.manual_seed(0)
    everything = TensorSplit(torch.from_numpy(pixels).float().div(255).reshape(len(pixels), -1),
                             torch.from_numpy(scores).float())
    train, test = split_off(everything, 0.2, seed=0)  # the image folder's test split
    mean, std = train.targets.mean(), train.targets.std(unbiased=False)
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(epochs):
        for batch in torch.randperm(len(train)).split(64):
            goal = (train.targets[batch] - mean) / std
            loss = torch.nn.functional.mse_loss(model(train.inputs[batch]).squeeze(1), goal)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        return float((model(test.inputs).squeeze(1) * std + mean - test.targets).square().mean().sqrt())


def test_image_regression_matches_a_plain_loop_and_a_csv_of_the_same_pixels(digits, cfg_for, tmp_path):
    epochs = ("trainer.epochs=8", "dataset.val_fraction=0")  # every training row trains, as in the plain loop
    images = run(cfg_for(*folder(digits, "dataset.task=regression", "dataset.target=score"), *COMMON, *epochs),
                 run_dir=tmp_path / "images")
    table = run(cfg_for("dataset=csv", f"dataset.path={digits / 'pixels.csv'}", "dataset.target=score", *COMMON,
                        *epochs), run_dir=tmp_path / "table")
    pixels = np.stack([np.asarray(Image.open(digits / "images" / f"{n}.png")) for n in range(1797)])
    with open(digits / "labels.csv", newline="") as handle:
        scores = np.array([float(row["score"]) for row in csv.DictReader(handle)], dtype=np.float32)
    plain = plain_pytorch_rmse(pixels, scores, epochs=8)
    rmse = images["test"]["test/rmse"]
    # Scores 1-5 (std 1.28): each reaches well under that, and within noise of the others.
    assert rmse < 0.8 and plain < 0.8 and table["test"]["test/rmse"] < 0.8
    assert abs(rmse - plain) < 0.2 * plain, (rmse, plain)
    assert abs(rmse - table["test"]["test/rmse"]) < 0.2 * rmse, (rmse, table["test"]["test/rmse"])
    # Reported in the score's units: the test RMSE is the one of the predictions, which are scores too.
    card = read_json(tmp_path / "images" / "data.json")
    assert card["target_names"] == ["score"] and card["target_scale"]["standardized"]
    assert card["target_scale"]["mean"][0] == pytest.approx(scores.mean(), abs=0.1)
    evaluation = evaluate_run(tmp_path / "images", [])
    assert evaluation["metrics"]["test/rmse"] == pytest.approx(rmse, rel=1e-5)
    assert evaluation["residuals"]["rmse"] == pytest.approx(rmse, rel=1e-4)
    assert (Path(evaluation["folder"]) / "predicted_vs_true.png").exists()
    # The export folds the de-standardisation in: its outputs are scores, as the predictions are.
    exported = torch.jit.load(str(export_run(tmp_path / "images", "torchscript")))
    trained = load_run(tmp_path / "images")
    batch = torch.from_numpy(pixels[:16]).float().div(255)[:, None]
    with torch.no_grad():
        expected = trained.card.scale().to_units(trained.model(batch))
        torch.testing.assert_close(exported(batch), expected)
    assert 0.5 < float(expected.mean()) < 5.5  # scores, not standardised values around 0


def test_binary_reports_auc_and_dlrun_eval_draws_its_curves(cfg_for, tmp_path):
    summary = run(cfg_for("dataset=breast_cancer", "trainer.epochs=3", *COMMON), run_dir=tmp_path / "run")
    assert summary["monitor"] == "val/auc" and summary["test"]["test/auc"] > 0.95
    assert {"test/acc", "test/f1", "test/ap", "test/precision", "test/recall"} <= set(summary["test"])
    evaluation = evaluate_run(tmp_path / "run", [])
    assert evaluation["metrics"]["test/auc"] == pytest.approx(summary["test"]["test/auc"], abs=1e-6)
    # The AUC of the model's scores on the test split, as scikit-learn computes it.
    trained = load_run(tmp_path / "run")
    data = build_data(trained.config, torch.device("cpu"), torch.Generator().manual_seed(0))
    inputs, targets = data.test.split.inputs, data.test.split.targets
    with torch.no_grad():
        scores = trained.model(inputs).reshape(-1)
    assert roc_auc_score(targets.numpy(), scores.numpy()) == pytest.approx(summary["test"]["test/auc"], abs=1e-6)
    confusion = evaluation["binary"]["confusion"]
    assert sum(confusion.values()) == len(targets) and evaluation["binary"]["positive_class"] == "malignant"
    assert confusion["true_positives"] + confusion["false_negatives"] == int(targets.sum())
    assert (Path(evaluation["folder"]) / "roc_pr_curves.png").exists()
    # Another threshold at evaluation: the counts and the accuracy both count at it.
    low = evaluate_run(tmp_path / "run", ["dataset=breast_cancer", "dataset.threshold=0.05"], split="test")
    counts = low["binary"]["confusion"]
    assert low["binary"]["threshold"] == 0.05 and counts["true_positives"] + counts["false_positives"] == int(
        (torch.sigmoid(scores) >= 0.05).sum())
    assert low["metrics"]["test/acc"] == pytest.approx(
        (counts["true_positives"] + counts["true_negatives"]) / len(targets), abs=1e-6)


def test_multilabel_tags_report_auc_and_a_test_csv_of_image_paths_is_predicted_in_its_order(digits, cfg_for,
                                                                                              tmp_path):
    summary = run(cfg_for(*folder(digits, "dataset.task=multilabel", "dataset.target=tags"), "trainer.epochs=4",
                          *COMMON), run_dir=tmp_path / "run")
    assert summary["test"]["test/auc"] > 0.9 and summary["test"]["test/f1"] > 0.8
    evaluation = evaluate_run(tmp_path / "run", [])
    assert sorted(evaluation["per_label"]) == sorted(TAGS)
    assert all(scores["auc"] > 0.85 for scores in evaluation["per_label"].values())
    # Kaggle's test.csv: an id column first, the image paths (relative to the CSV's folder, or to the training
    # root), rows in no particular order, one image twice.
    order = [901, 5, 1400, 5, 77, 1796, 300]
    (tmp_path / "kaggle" / "more").mkdir(parents=True)
    (tmp_path / "kaggle" / "more" / "x.png").write_bytes((digits / "images" / "901.png").read_bytes())
    lines = ["id,path"] + [f"row{k},{'more/x.png' if n == 901 else f'images/{n}.png'}" for k, n in enumerate(order)]
    (tmp_path / "kaggle" / "test.csv").write_text("\n".join(lines) + "\n")
    predict([str(tmp_path / "run"), str(tmp_path / "kaggle" / "test.csv"), "--out", str(tmp_path / "sub.csv")])
    with open(tmp_path / "sub.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["id", "tags"]  # keyed by the first column, the prediction under the target's name
    assert [row["id"] for row in rows] == [f"row{k}" for k in range(len(order))]
    # Each row is the model's answer for its own image: the labels whose probability is 0.5 or more.
    trained = load_run(tmp_path / "run")
    images = torch.stack([torch.from_numpy(np.array(Image.open(digits / "images" / f"{n}.png"))) for n in order])
    with torch.no_grad():
        yes = trained.model(images[:, None].float().div(255)).sigmoid() >= 0.5
    assert [row["tags"] for row in rows] == [" ".join(t for t, on in zip(trained.card.classes, hit) if on)
                                             for hit in yes.tolist()]
    labels = load_digits().target
    right = [set(row["tags"].split()) == set(digit_tags(labels[n]).split()) for row, n in zip(rows, order)]
    assert sum(right) >= 3 and rows[1]["tags"] == rows[3]["tags"]


def test_test_fraction_zero_and_a_kfold_refit_train_on_every_row(cfg_for, tmp_path):
    summary = run(cfg_for("dataset=diabetes", "model=mlp", "model.hidden=[16]", "trainer.kfold=2",
                          "trainer.kfold_refit=true", "dataset.test_fraction=0", "trainer.epochs=3"),
                  run_dir=tmp_path / "run")
    saved = read_json(tmp_path / "run" / "summary.json")
    assert saved["test"] == {} and all(not any(k.startswith("test/") for k in row) for row in saved["folds"])
    folds = [read_json(tmp_path / "run" / f"fold_{k}" / "summary.json") for k in range(2)]
    assert [fold["examples"] for fold in folds] == [{"train": 221, "val": 221, "test": 0}] * 2
    refit = saved["refit"]
    assert refit["examples"] == {"train": 442, "val": 0, "test": 0}  # every row, none held out
    best = [fold["best_epoch"] for fold in folds]
    assert refit["epochs"] == max(1, round(sum(best) / 2)) and summary["refit"] == refit
    assert math.isfinite(refit["final"]["train/rmse"]) and refit["test"] == {}
    assert load_run(tmp_path / "run").run_dir == tmp_path / "run" / "refit"  # what a submission is made from



@pytest.mark.slow
def test_auc_over_two_processes_is_the_auc_of_every_score(tmp_path):
    generator = torch.Generator().manual_seed(0)
    targets = (torch.rand(101, generator=generator) < 0.3).float()
    scores = targets + torch.randn(101, generator=generator)
    torch.multiprocessing.spawn(score_part, args=(str(tmp_path / "init"), scores, targets, str(tmp_path / "auc")),
                                nprocs=2, join=True)
    expected = roc_auc_score(targets.numpy(), scores.numpy())
    for rank in range(2):
        metrics = torch.load(tmp_path / f"auc.{rank}", weights_only=True)
        assert metrics["auc"] == pytest.approx(expected, abs=1e-6)
