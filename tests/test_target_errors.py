"""Targets of every kind read alike from every source, scored as scikit-learn scores them; a target, head or input
a model or source cannot carry is one line naming the keys, before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import f1_score, mean_absolute_error, r2_score, roc_auc_score

from conftest import compose_config, run_cli
from dataset_files import write_image_folder, write_text
from dlrun.config import validate
from dlrun.data.targets import TargetScale, encode_targets
from dlrun.engine.setup import build_training
from dlrun.errors import ConfigError, DataError, DlrunError
from dlrun.tasks import Binary, Multilabel, Regression


def _build(*overrides: str):
    return build_training(validate(compose_config("device=cpu", *overrides)), epochs=1)


def _summed(task, batches) -> list[float]:
    task.start_pass(training=False)
    stats = None
    for outputs, targets in batches:
        batch = task.batch_stats(outputs, targets, task.loss(outputs, targets))
        stats = batch if stats is None else stats + batch
    return stats.tolist()


def test_regression_metrics_are_scikit_learns_in_the_targets_units():
    generator = torch.Generator().manual_seed(0)
    truth = torch.randn(60, 2, generator=generator) * torch.tensor([100.0, 0.5]) + torch.tensor([1000.0, 3.0])
    predicted = truth + torch.randn(60, 2, generator=generator) * torch.tensor([30.0, 0.2])
    scale = TargetScale.fit(truth[:40], standardized=True)
    task = Regression(scale=scale, names=["price", "score"])
    outputs = scale.to_model(predicted)  # what a model trained on standardised targets gives
    metrics = task.metrics(_summed(task, [(outputs[:25], truth[:25]), (outputs[25:], truth[25:])]))
    assert metrics["rmse"] == pytest.approx(float((predicted - truth).square().mean().sqrt()), rel=1e-4)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-4)
    assert metrics["r2"] == pytest.approx(r2_score(truth, predicted), rel=1e-4)
    assert metrics["loss"] == pytest.approx(float((outputs - scale.to_model(truth)).square().mean()), rel=1e-4)


def test_binary_and_multilabel_metrics_are_scikit_learns():
    generator = torch.Generator().manual_seed(1)
    truth = (torch.rand(80, 3, generator=generator) < 0.4).float()
    logits = truth * 1.5 - 0.7 + torch.randn(80, 3, generator=generator)
    multilabel = Multilabel(["a", "b", "c"], threshold=0.6)
    metrics = multilabel.metrics(_summed(multilabel, [(logits[:50], truth[:50]), (logits[50:], truth[50:])]))
    predicted = (logits.sigmoid() >= 0.6).numpy()
    assert metrics["auc"] == pytest.approx(roc_auc_score(truth, logits, average="macro"), rel=1e-5)
    assert metrics["f1"] == pytest.approx(f1_score(truth, predicted, average="macro"), rel=1e-5)
    assert metrics["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"), rel=1e-5)
    assert metrics["exact_match"] == pytest.approx(float((predicted == truth.numpy()).all(axis=1).mean()))
    assert multilabel.per_label()["b"]["auc"] == pytest.approx(roc_auc_score(truth[:, 1], logits[:, 1]), rel=1e-5)

    binary = Binary(("no", "yes"), pos_weight=[2.0])
    metrics = binary.metrics(_summed(binary, [(logits[:, :1], truth[:, 0])]))
    assert metrics["auc"] == pytest.approx(roc_auc_score(truth[:, 0], logits[:, 0]), rel=1e-5)
    assert metrics["f1"] == pytest.approx(f1_score(truth[:, 0], (logits[:, 0] >= 0).numpy()), rel=1e-5)
    weighted = torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], truth[:, 0],
                                                                    pos_weight=torch.tensor(2.0))
    assert metrics["loss"] == pytest.approx(float(weighted), rel=1e-5)


def test_every_kind_reads_from_a_files_columns():
    source = "t.csv"
    tags = encode_targets("multilabel", {"tags": ["cat dog", None, "dog"]}, source)
    assert tags.classes == ("cat", "dog") and tags.values.tolist() == [[1, 1], [0, 0], [0, 1]]
    flags = encode_targets("multilabel", {"a": ["1", "0"], "b": ["0", "0"]}, source)
    assert flags.classes == ("a", "b") and flags.values.tolist() == [[1, 0], [0, 0]]
    yes_no = encode_targets("binary", {"sex": ["male", "female", "male"]}, source)
    assert yes_no.classes == ("female", "male") and yes_no.values.tolist() == [1, 0, 1]
    numbers = encode_targets("regression", {"x": ["1.5", "2"], "y": ["3", "-1e3"]}, source)
    assert numbers.values.tolist() == [[1.5, 3.0], [2.0, -1000.0]] and numbers.names == ("x", "y")
    classes = encode_targets("classification", {"label": ["10", "2", "b"]}, source)
    assert classes.classes == ("2", "10", "b") and classes.values.tolist() == [1, 0, 2]
    with pytest.raises(DataError, match=r"^t\.csv: dataset\.task=binary needs two distinct values in 'label', "
                                        r"found 3 \(2, 10, b\); use dataset\.task=classification for more classes$"):
        encode_targets("binary", {"label": ["10", "2", "b"]}, source)
    with pytest.raises(DataError, match=r"^t\.csv line 3: target 'x' holds 'big', not a number \(dataset\.task="
                                        r"regression\); use dataset\.task=classification for labels$"):
        encode_targets("regression", {"x": ["1", "big"]}, source)
    with pytest.raises(DataError, match=r"^t\.csv line 2: target 'x' is '1e39', not a finite number in float32"):
        encode_targets("regression", {"x": ["1e39", "1"]}, source)
    with pytest.raises(DataError, match=r"^t\.csv: the data's labels fox are not labels of the model; its labels: "
                                        r"cat, dog$"):
        encode_targets("multilabel", {"tags": ["fox cat"]}, source, classes=["cat", "dog"])


@pytest.mark.parametrize("overrides, message", [
    (("dataset=digits", "dataset.task=binary", "model=mlp"),
     r"^dataset\.task=binary needs one target 0 or 1 per example; load_digits gives 10 distinct values "
     r"\(0, 1, 2, 3, 4, 5, \.\.\.\): use dataset\.task=classification$"),
    (("dataset=digits", "dataset.task=multilabel", "model=mlp"),
     r"^dataset\.task=multilabel needs a row of 0/1 values per example \(one per label\); load_digits gives one "
     r"value per example: use dataset\.task=classification$"),
    (("dataset=breast_cancer", "model=mlp", "dataset.num_outputs=2"),
     r"^dataset\.task=binary needs 1 output \(one logit: the positive class's score\) but the model \(MLP\) gives "
     r"2 outputs per example: set dataset\.num_outputs=1 \(model\.num_outputs follows it\)$"),
    (("dataset=diabetes", "model=mlp", "model._target_=fixed_width.FixedWidth"),
     r"^the model \(FixedWidth\) cannot take this dataset's inputs of shape \[10\] \(dataset\.input_shape=\[10\]\): "
     r"RuntimeError: mat1 and mat2 shapes cannot be multiplied \(1x10 and 20x1\); choose a model for this input"),
    (("dataset=breast_cancer", "model=mlp", "dataset.pos_weight=-1"),
     r"^dataset\.pos_weight=-1 is out of range: a number > 0, a list of 1 \(one per label\), auto"),
    (("dataset=diabetes", "model=mlp", "dataset.loss=l1"),
     r"^dataset\.loss='l1' is not one of: mse, huber \(dataset\.task=regression\)$"),
    (("dataset=breast_cancer", "model=mlp", "dataset.threshold=abc"),
     r"^dataset\.threshold='abc' is not a number: a probability in \(0, 1\), e\.g\. 0\.5$"),
    (("dataset=breast_cancer", "model=mlp", "+dataset.loss=huber"),
     r"^dataset\.loss=huber does not apply to dataset\.task=binary: it is for regression targets; leave it null$"),
])
def test_a_target_or_head_that_does_not_fit_is_one_line_before_training(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _build(*overrides)


def test_a_source_that_cannot_carry_the_task_is_one_line(tmp_path):
    write_text(tmp_path / "book.txt")
    with pytest.raises(ConfigError, match=r"^dataset\.task=classification: load_text gives a text whose targets are "
                                          r"the next tokens; it carries dataset\.task=language_model only$"):
        _build("dataset=text", f"dataset.path={tmp_path / 'book.txt'}", "dataset.task=classification", "model=mlp",
               "dataset.num_outputs=3")
    write_image_folder(tmp_path / "pets", classes=("cat", "dog", "owl"))
    with pytest.raises(DlrunError, match=r"^dataset\.task=regression needs targets in a CSV: set dataset\.labels_csv"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path / 'pets'}", "dataset.task=regression"))
    with pytest.raises(DlrunError, match=r"^dataset\.task=binary needs two class folders under .*pets, found 3 "
                                         r"\(cat, dog, owl\); use dataset\.task=classification$"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path / 'pets'}", "dataset.task=binary"))
    with pytest.raises(ConfigError, match=r"^trainer\.kfold_refit=true refits after K-fold cross-validation: set "
                                          r"trainer\.kfold=K too$"):
        validate(compose_config("trainer.kfold_refit=true"))


def test_two_class_folders_train_a_binary_model(tmp_path):
    write_image_folder(tmp_path / "pets")  # cat, dog
    training = _build("dataset=image_folder", f"dataset.root={tmp_path / 'pets'}", "dataset.task=binary",
                      "dataset.num_workers=0", "model=mlp", "dataset.resize=12")
    assert training.trainer.task.classes == ["cat", "dog"] and training.model(
        training.data.example_input()).shape == (1, 1)
    targets = training.data.train.split.targets
    assert targets.dtype == torch.float32 and set(targets.tolist()) == {0.0, 1.0}


@pytest.mark.slow
def test_the_cli_says_which_keys_do_not_fit_and_exits_2(tmp_path):
    result = run_cli("dataset=breast_cancer", "model=mlp", "dataset.num_outputs=3", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "dlrun: error: dataset.task=binary needs 1 output (one logit: the positive class's score) but the model "
        "(MLP) gives 3 outputs per example: set dataset.num_outputs=1 (model.num_outputs follows it)"]
    assert not list(Path(tmp_path).glob("outputs/**/checkpoints"))
