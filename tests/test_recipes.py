"""Every recipe in conf/experiment/ composes and validates; the ones that run offline reach their numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from conftest import compose_config, run_cli
from dataset_files import place_time_machine
from dlrun.config import validate
from dlrun.data.storage import DATA_ROOT_VARIABLE
from dlrun.train import run

CONF = Path(__file__).parents[1] / "conf"
RECIPES = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))


def sweep_choices(recipe: str) -> list[list[str]]:
    """One override list per job of a recipe that is a multirun (`hydra.sweeper.params`), else [[]]."""
    raw = OmegaConf.load(CONF / "experiment" / f"{recipe}.yaml")
    params = OmegaConf.select(raw, "hydra.sweeper.params") or {}
    jobs: list[list[str]] = [[]]
    for key, values in params.items():
        override = OverridesParser.create().parse_overrides([f"{key}={values}"])[0]
        jobs = [job + [f"{key}={value}"] for job in jobs for value in override.sweep_string_iterator()]
    return jobs


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_validates(recipe, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ROOT_VARIABLE, str(tmp_path))  # the text recipes read their vocabulary from the file
    place_time_machine(tmp_path)
    for job in sweep_choices(recipe):
        cfg = compose_config(f"+experiment={recipe}", *job)  # a missing option fails here
        validate(cfg)
        assert cfg.name == f"d2l-{Path(recipe).name}"


def test_fashion_mnist_recipes_follow_the_published_table():
    table = {"softmax": (256, 0.1, 28), "mlp": (256, 0.1, 28), "mlp_dropout": (256, 0.5, 28),
             "lenet": (256, 0.9, 28), "lenet_bn": (256, 1.0, 28), "alexnet": (128, 0.01, 224),
             "vgg": (128, 0.05, 224), "nin": (128, 0.1, 224), "googlenet": (128, 0.1, 96),
             "resnet": (256, 0.05, 96), "densenet": (256, 0.1, 96), "vit": (128, 0.1, 96)}
    for name, (batch, lr, size) in table.items():
        raw = OmegaConf.load(CONF / "experiment" / "d2l" / f"{name}.yaml")
        assert (raw.trainer.batch_size, raw.optimizer.lr, raw.dataset.resize, raw.trainer.epochs) == (batch, lr, size, 10)
        assert {"override /dataset": "fashion_mnist", "override /optimizer": "sgd"}.items() <= \
            {k: v for entry in raw.defaults for k, v in entry.items()}.items(), name


def test_a_multirun_recipe_runs_every_job_from_the_cli(tmp_path):
    result = run_cli("+experiment=d2l/dropout", "debug=smoke", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    jobs = sorted(p.parent.name for p in tmp_path.glob("outputs/multirun/*/*_d2l-dropout/*/summary.json"))
    assert len(jobs) == 2
    assert jobs[0].startswith("0_") and jobs[0].endswith("model.dropout=_0.2,0.5_")
    assert jobs[1].startswith("1_") and jobs[1].endswith("model.dropout=_0.0,0.0_")


def linear_weights(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    model = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    (weight,) = [v for k, v in model.items() if k.endswith("weight")]
    (bias,) = [v for k, v in model.items() if k.endswith("bias")]
    return weight.flatten(), bias


def test_linear_regression_recovers_w_and_b(cfg_for, tmp_path):
    run(cfg_for("+experiment=d2l/linear_regression"), run_dir=tmp_path / "r")
    weight, bias = linear_weights(tmp_path / "r")
    assert (weight - torch.tensor([2.0, -3.4])).abs().max() < 5e-3
    assert (bias - 4.2).abs().max() < 5e-3


def test_weight_decay_stops_the_overfitting(cfg_for, tmp_path):
    results = {}
    for decay in (0, 3):
        summary = run(cfg_for("+experiment=d2l/weight_decay", f"regularization.weight_decay={decay}"),
                      run_dir=tmp_path / str(decay))
        weight, _ = linear_weights(tmp_path / str(decay))
        results[decay] = (weight.norm().item(), summary["final"]["train/loss"], summary["test"]["test/loss"])
    norm, train_loss, test_loss = results[0]
    assert 8 < norm < 20 and test_loss > 10 * train_loss
    assert results[3][0] < 1.0
