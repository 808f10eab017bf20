"""The regularization fields reach the loss, the gradients and the loop; every preset composes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config, read_json
from dlrun.config import validate
from dlrun.engine.optim import build_l1_penalty
from dlrun.errors import ConfigError
import dlrun.train
from dlrun.train import run

PRESETS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "regularization").glob("*.yaml"))
FAST = ("model=softmax", "optimizer=sgd", "trainer.batch_size=64", "trainer.limit_batches=2")


@pytest.mark.parametrize("decay_bias_and_norm", [False, True])
def test_l1_adds_exactly_lambda_sign_w_to_the_gradient(decay_bias_and_norm):
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 1)
    inputs, targets = torch.randn(16, 5), torch.randn(16, 1)
    strength = 0.3

    def gradients(with_l1: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        loss = F.mse_loss(model(inputs), targets)
        if with_l1:
            loss = loss + build_l1_penalty(model, strength, decay_bias_and_norm)()
        loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, penalised = gradients(False), gradients(True)
    torch.testing.assert_close(penalised["weight"] - plain["weight"], strength * model.weight.sign(),
                               rtol=0, atol=1e-6)
    bias_change = strength * model.bias.sign() if decay_bias_and_norm else torch.zeros(1)
    torch.testing.assert_close(penalised["bias"] - plain["bias"], bias_change, rtol=0, atol=1e-6)


def test_l1_in_the_training_loop_shrinks_the_weights(cfg_for, tmp_path):
    def weight_l1(name: str, strength: float) -> float:
        run(cfg_for(*FAST, "trainer.epochs=2", f"regularization.l1={strength}"), run_dir=tmp_path / name)
        weights = torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=True)["model"]
        return weights["net.1.weight"].abs().sum().item()

    assert weight_l1("l1", 0.01) < 0.8 * weight_l1("plain", 0.0)


def test_label_smoothing_reaches_the_classification_loss(cfg_for, tmp_path, monkeypatch):
    seen = []
    cross_entropy = F.cross_entropy

    def recording(*args, **kwargs):
        seen.append(kwargs.get("label_smoothing", 0.0))
        return cross_entropy(*args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", recording)
    run(cfg_for(*FAST, "trainer.epochs=1", "regularization.label_smoothing=0.2"), run_dir=tmp_path / "r")
    assert seen and set(seen) == {0.2}


def test_early_stopping_stops_at_the_right_epoch_on_a_scripted_metric(cfg_for, tmp_path, monkeypatch):
    # Best val/acc at epoch 2, no better one after it: patience 3 stops after epoch 5.
    scripted = iter([0.5, 0.7, 0.6, 0.65, 0.69, 0.99, 0.99, 0.99, 0.99, 0.99, 0.0])

    def scripted_evaluate(model, loader, task, precision, **options):
        return {"loss": 1.0, "acc": next(scripted)}

    monkeypatch.setattr(dlrun.train, "evaluate", scripted_evaluate)
    summary = run(cfg_for(*FAST, "trainer.epochs=10", "regularization.early_stopping=3"), run_dir=tmp_path / "r")
    assert summary["epochs_completed"] == 5 and summary["stopped_early"] == 5
    assert summary["best_epoch"] == 2 and summary["best_value"] == 0.7
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5, 5]  # five epochs, then the test line
    assert read_json(tmp_path / "r" / "status.json")["status"] == "completed"


def test_without_early_stopping_every_epoch_runs(cfg_for, tmp_path, monkeypatch):
    monkeypatch.setattr(dlrun.train, "evaluate",
                        lambda model, loader, task, precision, **options: {"loss": 1.0, "acc": 0.5})
    summary = run(cfg_for(*FAST, "trainer.epochs=4"), run_dir=tmp_path / "r")
    assert summary["epochs_completed"] == 4 and summary["stopped_early"] is None


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_composes_with_every_field_overridable(preset):
    cfg = validate(compose_config(f"regularization={preset}", "regularization.weight_decay=0.01",
                                  "regularization.l1=0.001", "regularization.early_stopping=2"))
    assert (cfg.regularization.weight_decay, cfg.regularization.l1, cfg.regularization.early_stopping) == (0.01, 0.001, 2)


@pytest.mark.parametrize("override,message", [
    ("regularization.l1=-1", "regularization.l1=-1.0 is out of range: must be >= 0"),
    ("regularization.label_smoothing=1.0", "regularization.label_smoothing=1.0 is out of range: must be in [0, 1)"),
    ("regularization.augment=rotate", "regularization.augment='rotate' is not one of: none, flip, flip_crop, "
                                      "flip_crop_jitter, imagenet"),
    ("regularization.early_stopping=-2", "regularization.early_stopping=-2 is out of range: must be >= 0 (0 = off)"),
])
def test_bad_regularization_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        validate(compose_config(override))
    assert str(error.value) == message
