"""dlrun-predict: image folders (nested, flat, one file), CSV rows through the training preprocessing, a submission."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from conftest import compose_config
from dataset_files import write_house_csv
from dlrun.data.tabular import encode_csv
from dlrun.tools.evaluate import evaluate_run
from dlrun.tools.loaded_run import load_run
from dlrun.tools.predict import main as predict
from dlrun.train import run

DLRUN_PREDICT = Path(sys.executable).with_name("dlrun-predict")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_digit_pngs(root: Path, count: int) -> list[str]:
    """The first `count` bundled digits as <label>/<index>.png (8x8 grey); returns their relative paths."""
    digits = load_digits()
    written = []
    for index in range(count):
        label = str(digits.target[index])
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * 255 / 16).round().astype(np.uint8)).save(root / label / f"{index}.png")
        written.append(f"{label}/{index}.png")
    return written


def test_a_folder_of_pngs_gets_one_row_per_file_and_the_evaluations_accuracy(digits_run, tmp_path):
    files = write_digit_pngs(tmp_path / "digits", 300)
    predict([str(digits_run), str(tmp_path / "digits"), "--out", str(tmp_path / "predictions.csv")])
    rows = read_rows(tmp_path / "predictions.csv")
    assert list(rows[0]) == ["file", "prediction"]
    assert sorted(row["file"] for row in rows) == sorted(files)  # one row per file, the path relative to the folder
    accuracy = np.mean([row["file"].split("/")[0] == row["prediction"] for row in rows])
    evaluation = evaluate_run(digits_run, ["dataset=image_folder", f"dataset.root={tmp_path / 'digits'}",
                                           "dataset.num_workers=0"])
    assert evaluation["examples"] == 300 and accuracy == pytest.approx(evaluation["metrics"]["all/acc"], abs=1e-12)

    # A flat folder, with probabilities; then a single image file.
    (tmp_path / "flat").mkdir()
    for name in files[:5]:
        (tmp_path / "flat" / name.replace("/", "_")).write_bytes((tmp_path / "digits" / name).read_bytes())
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    (tmp_path / "flat" / ".hidden.png").write_bytes(b"")
    predict([str(digits_run), str(tmp_path / "flat"), "--probs", "--out", str(tmp_path / "flat.csv")])
    flat = read_rows(tmp_path / "flat.csv")
    nested = {row["file"].replace("/", "_"): row["prediction"] for row in rows}
    assert [row["file"] for row in flat] == sorted(name.replace("/", "_") for name in files[:5])
    for row in flat:
        probabilities = {name[len("prob_"):]: float(value) for name, value in row.items() if name.startswith("prob_")}
        # each is rounded to 6 decimals: ten of them sum to 1 within 5e-6
        assert list(probabilities) == [str(d) for d in range(10)] and sum(probabilities.values()) == pytest.approx(1, abs=5e-6)
        assert row["prediction"] == max(probabilities, key=probabilities.get) == nested[row["file"]]
    predict([str(digits_run), str(tmp_path / "digits" / files[7]), "--out", str(tmp_path / "one.csv")])
    assert read_rows(tmp_path / "one.csv") == [{"file": Path(files[7]).name,
                                                "prediction": nested[files[7].replace("/", "_")]}]


@pytest.fixture(scope="module")
def house_run(tmp_path_factory) -> tuple[Path, Path]:
    """d2l's house prices in small: SalePrice regressed from a CSV (log-RMSE), Id dropped. (run dir, train.csv)"""
    root = tmp_path_factory.mktemp("house")
    write_house_csv(root / "train.csv")
    run(compose_config(f"output_root={root}", "dataset=csv", f"dataset.path={root / 'train.csv'}",
                       "dataset.target=SalePrice", "dataset.drop=[Id]", "dataset.log_target=true", "model=mlp",
                       "trainer.epochs=2", "trainer.batch_size=8"), run_dir=root / "run")
    return root / "run", root / "train.csv"


def without_column(source: Path, target: Path, column: str, edit=None) -> None:
    with open(source, newline="") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        del row[column]
        if edit:
            edit(row)
    with open(target, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_csv_rows_get_the_training_preprocessing_and_a_submission_file(house_run, tmp_path):
    run_dir, train_csv = house_run
    without_column(train_csv, tmp_path / "test.csv", "SalePrice")
    predict([str(run_dir), str(tmp_path / "test.csv"), "--id-column", "Id", "--target-name", "SalePrice",
             "--out", str(tmp_path / "submission.csv")])
    rows = read_rows(tmp_path / "submission.csv")
    assert list(rows[0]) == ["Id", "SalePrice"] and [row["Id"] for row in rows] == [str(n) for n in range(40)]
    # Exactly what the model gives for the training rows as training encoded them.
    trained = load_run(run_dir)
    features = torch.from_numpy(encode_csv(str(train_csv), "SalePrice", "regression", ("Id",)).features)
    with torch.no_grad():  # in the target's units: the model learnt standardised prices
        expected = trained.card.scale().to_units(trained.model(features)).reshape(-1).tolist()
    assert [float(row["SalePrice"]) for row in rows] == pytest.approx(expected, rel=1e-6)

    # An unseen category goes to the <missing> bucket: the same prediction as a missing value.
    def street(value):
        return lambda row: row.update(Street=value)

    without_column(train_csv, tmp_path / "unseen.csv", "SalePrice", street("Cobblestone"))
    without_column(train_csv, tmp_path / "missing.csv", "SalePrice", street(""))
    predict([str(run_dir), str(tmp_path / "unseen.csv"), "--out", str(tmp_path / "unseen_out.csv")])
    predict([str(run_dir), str(tmp_path / "missing.csv"), "--out", str(tmp_path / "missing_out.csv")])
    unseen, missing = read_rows(tmp_path / "unseen_out.csv"), read_rows(tmp_path / "missing_out.csv")
    # Written under the training target's name by default.
    assert list(unseen[0]) == ["row", "SalePrice"] and [row["row"] for row in unseen] == [str(n) for n in range(1, 41)]
    assert unseen == missing
    assert [row["SalePrice"] for row in unseen] != [row["SalePrice"] for row in rows]  # Street counts


def test_a_missing_column_is_one_line_naming_it(house_run, tmp_path):
    run_dir, train_csv = house_run
    without_column(train_csv, tmp_path / "no_street.csv", "Street")
    result = subprocess.run([str(DLRUN_PREDICT), str(run_dir), str(tmp_path / "no_street.csv"), "--out",
                             str(tmp_path / "out.csv")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"dlrun-predict: error: {tmp_path / 'no_street.csv'} has no column 'Street'; "
                                          "the model reads the columns LotArea, Street, Zero, Quality"]
    assert not (tmp_path / "out.csv").exists()


def test_eval_reads_another_labelled_csv_through_the_runs_encoder(house_run, tmp_path):
    run_dir, train_csv = house_run
    with open(train_csv, newline="") as handle:
        rows = list(csv.reader(handle))
    with open(tmp_path / "shuffled.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([row[::-1] for row in rows])  # the same rows, the columns in reverse order
    result = evaluate_run(run_dir, ["dataset=csv", f"dataset.path={tmp_path / 'shuffled.csv'}",
                                    "dataset.target=SalePrice", "dataset.log_target=true"])
    table = encode_csv(str(train_csv), "SalePrice", "regression", ("Id",))
    with torch.no_grad():
        trained = load_run(run_dir)
        outputs = trained.card.scale().to_units(trained.model(torch.from_numpy(table.features))).reshape(-1).double()
    expected = (outputs - torch.from_numpy(table.targets).double()).square().mean().sqrt()
    assert result["split"] == "all" and result["examples"] == 40
    assert result["metrics"]["all/rmse"] == pytest.approx(float(expected), rel=1e-5)
