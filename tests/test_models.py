"""Every conf/model/*.yaml builds on the default dataset, trains a step, and is summarised."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import compose_config
from dlrun.models import build_model
from dlrun.models.summary import summarize
from dlrun.schema import validate

MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml"))


@pytest.mark.parametrize("name", MODELS)
def test_model_forward_backward(name):
    cfg = validate(compose_config(f"model={name}"))
    model = build_model(cfg.model)
    shape = list(cfg.dataset.input_shape)
    inputs = torch.rand(4, *shape)
    outputs = model(inputs)
    assert outputs.shape == (4, cfg.dataset.num_outputs)
    loss = torch.nn.functional.cross_entropy(outputs, torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(loss)
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), parameter_name

    summary = summarize(model, inputs[:1])
    assert summary.total_params == sum(p.numel() for p in model.parameters())
    assert summary.rows[-1].output_shape == (cfg.dataset.num_outputs,)
    assert summary.flops > 0


def test_lenet_is_resized_to_its_design_size_and_counts_flops():
    cfg = validate(compose_config("model=lenet"))
    assert list(cfg.dataset.input_shape) == [1, 28, 28]
    model = build_model(cfg.model)
    summary = summarize(model, torch.zeros(1, 1, 28, 28))
    first_conv = summary.rows[0]
    assert first_conv.output_shape == (6, 28, 28)
    assert first_conv.flops == 2 * 6 * 28 * 28 * 25  # multiply-adds of a 5x5 single-channel conv
    assert validate(compose_config("model=lenet", "dataset.resize=null")).dataset.input_shape == [1, 8, 8]
