"""Every optimizer preset builds and steps every model; weight decay goes to the right parameters."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from conftest import compose_config
from dlrun.config import validate
from dlrun.engine.optim import build_optimizer, parameter_groups
from dlrun.models import build_model

CONF = Path(__file__).parents[1] / "conf"
OPTIMIZERS = sorted(p.stem for p in (CONF / "optimizer").glob("*.yaml"))
# Detection models (`for_task: detection`) take boxes, not class labels: test_detection_models.py steps them.
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if OmegaConf.load(p).get("for_task") is None)


# Small but valid images and widths (as in test_model_training), so a step takes milliseconds;
# a model not listed runs at its defaults.
TINY = {
    "alexnet": ["dataset.resize=67", "model.width_divisor=16", "model.head_width=32"],
    "vgg": ["dataset.resize=32", "model.width_divisor=16", "model.head_width=32"],
    "nin": ["dataset.resize=67", "model.width_divisor=16"],
    "googlenet": ["dataset.resize=32"],
    "resnet": ["dataset.resize=16"],
    "densenet": ["dataset.resize=16", "model.growth_rate=8", "model.block_sizes=[2,2]"],
    "torchvision": ["model.name=shufflenet_v2_x0_5"],
}


@lru_cache(maxsize=None)
def config_with_model(model_name: str) -> DictConfig:
    """Composed once per model (composition is the slow part); the optimizer is swapped in per test."""
    return validate(compose_config(f"model={model_name}", "regularization=l2", *TINY.get(model_name, [])))


@pytest.mark.parametrize("model_name", MODELS)
@pytest.mark.parametrize("optimizer_name", OPTIMIZERS)
def test_every_optimizer_steps_every_model(optimizer_name, model_name):
    cfg = config_with_model(model_name).copy()
    cfg.optimizer = OmegaConf.load(CONF / "optimizer" / f"{optimizer_name}.yaml")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    before = [p.detach().clone() for p in model.parameters()]
    inputs = torch.rand(2, *cfg.dataset.input_shape)
    loss = torch.nn.functional.cross_entropy(model(inputs), torch.tensor([0, 1]))
    loss.backward()
    optimizer.step()
    assert optimizer.param_groups[0]["lr"] == cfg.optimizer.lr
    assert optimizer.param_groups[0]["weight_decay"] == 5e-4  # regularization=l2 reached the optimizer
    # Every trainable parameter is handed to the optimizer, and each parameter group moves.
    # (Not every single tensor must move: a batch-norm scale with a 1e-6 gradient under
    # momentum's lr 0.005 changes by less than float32 resolves at 1.0.)
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert stepped == {id(p) for p in model.parameters() if p.requires_grad}
    moved = {id(p) for b, p in zip(before, model.parameters()) if not torch.equal(b, p)}
    for group in optimizer.param_groups:
        assert moved & {id(p) for p in group["params"]}, f"no parameter with weight_decay={group['weight_decay']} moved"
    for parameter in model.parameters():
        assert torch.isfinite(parameter).all()
    if "fused" in cfg.optimizer:  # CPU parameters: the fused kernel is not chosen
        assert optimizer.defaults["fused"] is False


@pytest.mark.parametrize("decay_bias_and_norm", [False, True])
def test_no_one_dimensional_parameter_is_decayed_unless_asked(decay_bias_and_norm):
    cfg = validate(compose_config("model=lenet", "model.batch_norm=true", "regularization.weight_decay=0.1",
                                  f"regularization.decay_bias_and_norm={decay_bias_and_norm}"))
    model = build_model(cfg.model)
    optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    decayed = [p for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    exempt = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert len(decayed) + len(exempt) == len(list(model.parameters()))
    one_dimensional = [p for p in model.parameters() if p.dim() == 1]
    assert len(one_dimensional) >= 4  # biases and batch-norm scales/shifts
    if decay_bias_and_norm:
        assert exempt == [] and len(decayed) == len(list(model.parameters()))
    else:
        assert all(p.dim() > 1 for p in decayed) and {id(p) for p in exempt} == {id(p) for p in one_dimensional}


def test_no_weight_decay_is_a_single_group():
    model = torch.nn.Linear(3, 2)
    assert [g["weight_decay"] for g in parameter_groups(model, 0.0, decay_bias_and_norm=False)] == [0.0]


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_preset_validates_and_shares_optimizer_lr(name):
    assert validate(compose_config(f"optimizer={name}", "optimizer.lr=0.123")).optimizer.lr == 0.123
