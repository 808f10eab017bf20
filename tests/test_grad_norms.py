"""trainer.log_grad_norms: per-layer gradient norms, averaged over an epoch's steps; d2l 5.4's vanishing gradients."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from conftest import compose_config
from dlrun.config import validate
from dlrun.engine.grad_norms import GradNorms
from dlrun.engine.precision import Precision
from dlrun.run.run_dir import config_fingerprint
from dlrun.train import run


def test_each_layers_norm_is_averaged_over_the_steps(tmp_path):
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1, bias=False))
    norms = GradNorms(model, Precision("off", torch.device("cpu")))
    first, _, last = model
    for scale in (1.0, 3.0):  # two steps with known gradients
        first.weight.grad = torch.full((2, 2), scale)  # norm 2 * scale
        first.bias.grad = torch.zeros(2)
        last.weight.grad = torch.tensor([[3.0 * scale, 4.0 * scale]])  # norm 5 * scale
        norms.add()
    with SummaryWriter(str(tmp_path)) as writer:
        values = norms.write(writer, epoch=1)
    assert values == pytest.approx({"grad_norm/00_0": (2 + 6) / 2, "grad_norm/01_2": (5 + 15) / 2})
    events = EventAccumulator(str(tmp_path)).Reload()
    (logged,) = events.Scalars("grad_norm/01_2")
    assert logged.value == pytest.approx(10) and logged.step == 1
    assert norms.sums is None  # the next epoch starts from zero


def grad_norms_of(tmp_path, activation: str) -> dict[str, list[float]]:
    run(compose_config(f"output_root={tmp_path}", "model=mlp", "model.hidden=[64,64,64,64]",
                       f"model.activation={activation}", "optimizer=sgd", "optimizer.lr=0.1", "trainer.epochs=2",
                       "trainer.log_grad_norms=true"), run_dir=tmp_path / activation)
    events = EventAccumulator(str(tmp_path / activation / "tb")).Reload()
    return {tag: [event.value for event in events.Scalars(tag)] for tag in events.Tags()["scalars"]
            if tag.startswith("grad_norm/")}


def test_sigmoid_gradients_vanish_towards_the_input_and_relu_ones_do_not(tmp_path):
    sigmoid, relu = grad_norms_of(tmp_path, "sigmoid"), grad_norms_of(tmp_path, "relu")
    layers = ["grad_norm/00_net.1", "grad_norm/01_net.3", "grad_norm/02_net.5", "grad_norm/03_net.7",
              "grad_norm/04_net.9"]
    assert sorted(sigmoid) == sorted(relu) == layers and all(len(values) == 2 for values in sigmoid.values())
    # Measured: the first layer's norm is 5e-4 of the output layer's with sigmoid, 0.2 with ReLU.
    assert sigmoid[layers[0]][-1] < 1e-3 * sigmoid[layers[-1]][-1]
    assert relu[layers[0]][-1] > 1e-2 * relu[layers[-1]][-1]


def test_off_by_default_and_outside_the_experiments_identity(digits_run):
    events = EventAccumulator(str(digits_run / "tb")).Reload()
    assert not [tag for tag in events.Tags()["scalars"] if tag.startswith("grad_norm/")]
    on, off = (validate(compose_config(f"trainer.log_grad_norms={flag}")) for flag in ("true", "false"))
    assert config_fingerprint(on) == config_fingerprint(off)  # a run may continue with them turned on
