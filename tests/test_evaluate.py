"""dlrun-eval: a run's own test split reproduced, its confusion matrix and pictures, other data, one-line errors.

(A language model's text is predicted here too, from the run trained for its evaluation.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, read_json
from dataset_files import REPETITIVE_TEXT, write_image_folder, write_text
from dlrun.errors import ConfigError
from dlrun.tools.evaluate import evaluate_run, evaluation_config, merge_overrides
from dlrun.tools.evaluate import main as evaluate_main
from dlrun.tools.loaded_run import load_run
from dlrun.tools.outputs import OutputOptions
from dlrun.tools.predict import main as predict
from dlrun.train import run

DLRUN_EVAL = Path(sys.executable).with_name("dlrun-eval")
HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides


def train(root: Path, *overrides: str) -> Path:
    run_dir = root / "run"
    run(compose_config(f"output_root={root}", *overrides), run_dir=run_dir)
    return run_dir


def valid_png(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
        return image.size


def test_the_runs_test_split_is_reproduced_with_its_confusion_matrix(digits_run):
    summary = read_json(digits_run / "summary.json")
    result = evaluate_run(digits_run, [])
    assert result["split"] == "test" and result["metrics"] == summary["test"]  # the same numbers, exactly
    assert result["checkpoint"].endswith("best.pt") and result["epoch"] == summary["best_epoch"]
    folder = Path(result["folder"])
    assert folder.parent == digits_run / "eval"
    assert read_json(folder / "metrics.json")["metrics"] == summary["test"]

    matrix = read_json(folder / "confusion_matrix.json")
    counts = np.array(matrix["counts"])
    assert matrix["classes"] == [str(d) for d in range(10)] and counts.shape == (10, 10)
    assert counts.sum() == result["examples"] == 360  # 20 % of the 1,797 digits
    assert np.trace(counts) / counts.sum() == pytest.approx(summary["test"]["test/acc"])
    for index, name in enumerate(matrix["classes"]):
        scores = result["per_class"][name]
        assert scores["support"] == counts[index].sum()
        assert scores["recall"] == pytest.approx(counts[index, index] / counts[index].sum())
        assert scores["precision"] == pytest.approx(counts[index, index] / counts[:, index].sum())
    assert result["wrong_examples"] == min(16, counts.sum() - np.trace(counts))  # the most confidently wrong

    assert valid_png(folder / "confusion_matrix.png")[0] > 300 and valid_png(folder / "wrong_examples.png")
    events = EventAccumulator(str(folder)).Reload()
    assert {"eval/confusion_matrix", "eval/wrong_examples"} <= set(events.Tags()["images"])
    assert events.Scalars("test/acc")[0].value == pytest.approx(summary["test"]["test/acc"])


def test_every_run_draws_its_curves(digits_run):
    width, height = valid_png(digits_run / "curves.png")
    assert width > 2 * height  # two panels side by side: loss, and accuracy


def test_other_images_by_overrides_with_classes_matched_by_name(digits_run, tmp_path):
    data = load_digits()
    for index in range(60):
        label = int(data.target[index])
        if label in (3, 7, 9):  # a folder of a few of the model's classes: indices 0, 1, 2 here, 3, 7, 9 there
            (tmp_path / "new" / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray((data.images[index] * 255 / 16).round().astype(np.uint8)).save(
                tmp_path / "new" / str(label) / f"{index}.png")
    files = len(list((tmp_path / "new").glob("*/*.png")))
    result = evaluate_run(digits_run, ["dataset=image_folder", f"dataset.root={tmp_path / 'new'}",
                                       "dataset.num_workers=0"])
    assert result["split"] == "all" and result["examples"] == files  # new data is evaluated whole
    counts = np.array(read_json(Path(result["folder"]) / "confusion_matrix.json")["counts"])
    assert counts.sum() == files and set(np.nonzero(counts.sum(axis=1))[0]) == {3, 7, 9}
    assert result["metrics"]["all/acc"] > 0.5


@pytest.mark.slow
def test_cli_last_checkpoint_and_one_line_errors(digits_run, tmp_path, capsys):
    result = subprocess.run([str(DLRUN_EVAL), str(digits_run), "--checkpoint", "last"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "test/acc" in result.stdout and "per class" in result.stdout
    latest = max((digits_run / "eval").iterdir(), key=lambda folder: folder.stat().st_mtime)
    assert read_json(latest / "metrics.json")["checkpoint"].endswith("last.pt")

    write_image_folder(tmp_path / "pets")  # classes cat and dog: not digits (in process: a second start costs ~10 s)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        evaluate_main([str(digits_run), "dataset=image_folder", f"dataset.root={tmp_path / 'pets'}",
                       "dataset.num_workers=0"])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "dlrun-eval: error: the data's classes cat, dog are not classes of the model; its classes: "
        "0, 1, 2, 3, 4, 5, 6, 7, 8, 9"]


def test_the_model_is_the_runs_own(digits_run):
    trained = load_run(digits_run)
    with pytest.raises(ConfigError, match="the model is the run's own"):
        evaluation_config(trained, ["model=lenet"])
    with pytest.raises(ConfigError, match="--device cpu"):
        evaluation_config(trained, ["device=cpu"])
    cfg, own = evaluation_config(trained, ["trainer.batch_size=7"])
    assert own and cfg.trainer.batch_size == 7 and cfg.model == trained.config.model
    assert merge_overrides(["model=mlp", "dataset=csv", "dataset.path=a.csv", "seed=3"],
                           ["dataset=image_folder", "dataset.root=x"]) == [
        "model=mlp", "seed=3", "dataset=image_folder", "dataset.root=x"]
    assert merge_overrides(["dataset=csv", "dataset.path=a.csv", "dataset.target=y"], ["dataset.path=b.csv"]) == [
        "dataset=csv", "dataset.target=y", "dataset.path=b.csv"]


def test_regression_scatter_and_residuals(tmp_path):
    run_dir = train(tmp_path, "dataset=diabetes", "model=mlp", "trainer.epochs=2")
    result = evaluate_run(run_dir, [])
    summary = read_json(run_dir / "summary.json")
    assert result["metrics"] == summary["test"]
    residuals = result["residuals"]
    assert residuals["count"] == result["examples"] == 89  # 20 % of the 442 patients
    assert residuals["rmse"] == pytest.approx(summary["test"]["test/rmse"], rel=1e-5)
    assert valid_png(Path(result["folder"]) / "predicted_vs_true.png")


def test_language_model_perplexity_and_generated_text(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)  # tiny_rnn
    write_text(tmp_path / "text.txt", REPETITIVE_TEXT)
    run_dir = train(tmp_path, "dataset=text", f"dataset.path={tmp_path / 'text.txt'}", "dataset.num_steps=10",
                    "model=mlp", "model._target_=tiny_rnn.TinyRNN", "trainer.batch_size=16", "trainer.epochs=3")
    result = evaluate_run(run_dir, [], options=OutputOptions(prefix="the qu", length=20))
    assert result["metrics"] == read_json(run_dir / "summary.json")["test"]
    text = result["generated"]["text"]
    assert text.startswith("the qu") and len(text) == len("the qu") + 20
    assert (Path(result["folder"]) / "generated.txt").read_text() == text + "\n"
    predict([str(run_dir), "the qu", "--length", "20", "--out", str(tmp_path / "text.csv")])
    assert (tmp_path / "text.csv").read_text().splitlines() == ["prefix,prediction", f"the qu,{text}"]

    # Another text: its characters are matched to the model's vocabulary by name (unknown ones → <unk>).
    write_text(tmp_path / "other.txt", "the lazy dog jumps over the quick brown fox. " * 20)
    with pytest.raises(ConfigError, match="has no .hydra/overrides.yaml, as a run started from code: name its "
                                          "dataset option too"):
        evaluate_run(run_dir, [f"dataset.path={tmp_path / 'other.txt'}"])
    other = evaluate_run(run_dir, ["dataset=text", f"dataset.path={tmp_path / 'other.txt'}"])
    assert other["split"] == "all" and other["metrics"]["all/ppl"] < result["metrics"]["test/ppl"] * 3
