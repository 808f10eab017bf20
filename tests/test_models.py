"""Every conf/model/*.yaml builds on the default dataset, trains a step, and is summarised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.models.init import ALIASES, INIT_SCHEMES
from dlrun.models.summary import summarize_model

# Models made for one task (`for_task: detection` in their YAML) have their own tests (test_detection_models.py).
MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml")
                if OmegaConf.load(p).get("for_task") is None)


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward(name):
    """At the model's design size (digits resized to it): forward, backward, a grad for every trainable param."""
    cfg = validate(compose_config(f"model={name}"))
    model = build_model(cfg.model)
    inputs = torch.rand(2, *cfg.dataset.input_shape)
    outputs = model(inputs)
    assert outputs.shape == (2, cfg.dataset.num_outputs)
    loss = torch.nn.functional.cross_entropy(outputs, torch.tensor([0, 1]))
    assert torch.isfinite(loss)
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for parameter_name, parameter in trainable:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name

    summary = summarize_model(model, inputs[:1])
    assert summary.total_params == sum(p.numel() for p in model.parameters()) == sum(r.params for r in summary.rows)
    assert summary.rows[-1].output_shape == (cfg.dataset.num_outputs,)
    assert summary.flops > 0
    if cfg.model.input_size is not None:
        assert list(cfg.dataset.input_shape)[1:] == [cfg.model.input_size] * 2


def test_lenet_is_resized_to_its_design_size_and_counts_flops():
    cfg = validate(compose_config("model=lenet"))
    assert list(cfg.dataset.input_shape) == [1, 28, 28]
    model = build_model(cfg.model)
    summary = summarize_model(model, torch.zeros(1, 1, 28, 28))
    first_conv = summary.rows[0]
    assert first_conv.output_shape == (6, 28, 28)
    assert first_conv.flops == 2 * 6 * 28 * 28 * 25  # multiply-adds of a 5x5 single-channel conv
    assert validate(compose_config("model=lenet", "dataset.resize=null")).dataset.input_shape == [1, 8, 8]


@pytest.mark.parametrize("overrides, params", [
    # d2l 8.2: VGG-11 with ratio 4 on one channel; 3x3 convs, head 512*7*7 → 4096 → 4096 → 10
    (["model=vgg", "model.width_divisor=4"],
     9 * (1 * 16 + 16 * 32 + 32 * 64 + 64 * 64 + 64 * 128 + 3 * 128 * 128) + (16 + 32 + 2 * 64 + 4 * 128)
     + 128 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096 + 4096 * 10 + 10),
    (["model=resnet"], None),
])
def test_architectures_match_d2l(overrides, params):
    cfg = validate(compose_config(*overrides))
    model = build_model(cfg.model)
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params
    else:  # ResNet-18: 17 convs + 1 linear = 18 weighted layers, plus 3 1x1 shortcut convs
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == 17 + 3
        deeper = build_model(validate(compose_config("model=resnet", "model.depth=34")).model)
        assert len([m for m in deeper.modules() if isinstance(m, torch.nn.Conv2d)]) == 33 + 3


def test_densenet_channels_follow_growth_rate_and_transitions():
    cfg = validate(compose_config("model=densenet", "model.growth_rate=8", "model.block_sizes=[2,3]"))
    model = build_model(cfg.model)
    # 64 stem + 2*8 = 80, transition halves to 40, + 3*8 = 64 into the classifier
    assert model.net[-1].in_features == 64


def test_recurrent_flops_count_every_gate_and_step():
    cfg = validate(compose_config("model=lstm", "model.hidden_size=16"))
    summary = summarize_model(build_model(cfg.model), torch.zeros(1, 1, 8, 8))
    lstm_row = next(row for row in summary.rows if row.kind == "LSTM")
    assert lstm_row.flops == 2 * 4 * 16 * 8 * (8 + 16)  # 4 gates, 8 steps, input 8 + hidden 16


def test_too_small_input_fails_with_one_line_naming_the_way_out():
    cfg = validate(compose_config("model=alexnet", "dataset.resize=32"))
    with pytest.raises(ConfigError, match=r"too small for AlexNet.*dataset.resize"):
        build_model(cfg.model)


def test_dropout_reaches_the_sites_and_missing_sites_are_logged(caplog):
    alexnet = build_model(validate(compose_config("model=alexnet", "regularization.dropout=0.5",
                                                  "model.width_divisor=16", "model.head_width=8")).model)
    rates = [m.p for m in alexnet.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.5, 0.5]
    mlp = build_model(validate(compose_config("model=mlp", "model.hidden=[32,32]", "model.dropout=[0.2,0.5]")).model)
    assert [m.p for m in mlp.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5]
    gru = build_model(validate(compose_config("model=gru", "model.num_layers=2", "regularization.dropout=0.3")).model)
    assert gru.rnn.dropout == 0.3
    with caplog.at_level("WARNING"):
        build_model(validate(compose_config("model=resnet", "regularization.dropout=0.5")).model, 0.5)
    assert "ResNet has no dropout sites: regularization.dropout=0.5 is not used" in caplog.text


@pytest.mark.parametrize("scheme", [scheme for scheme in [*INIT_SCHEMES, *ALIASES] if scheme != "default"])
def test_init_schemes_reset_recurrent_weights_and_zero_biases(scheme):
    cfg = validate(compose_config("model=gru", "model.hidden_size=8", f"model.init={scheme}"))
    model = build_model(cfg.model)
    assert all((p == 0).all() for n, p in model.named_parameters() if "bias" in n)
    expected_std = {"normal": 0.01, "standard_normal": 1.0}.get(scheme)
    if expected_std is not None:
        assert model.rnn.weight_hh_l0.std().item() == pytest.approx(expected_std, rel=0.2)
    with pytest.raises(ConfigError, match="model.init='he' is not one of: default, constant, normal, uniform"):
        build_model(validate(compose_config("model=mlp", "model.init=he")).model)
