"""`model.activation` and `model.init` on every model family: each choice builds what it names, sets the
weights it says, trains, and a bad choice is one line listing the valid ones."""

from __future__ import annotations

import copy
import functools
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

from conftest import compose_config
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.models.init import ALIASES, INIT_SCHEMES
from dlrun.models.layers import ACTIVATIONS, activation_factory
from dlrun.run.run_dir import config_fingerprint

CONF = Path(__file__).parents[1] / "conf"
# The smoke models at tiny widths: LeNet at its 28 px, AlexNet at its smallest input and 1/16 of its width.
SMOKE_MODELS = {"mlp": ["model=mlp", "model.hidden=[32,32]"],
                "lenet": ["model=lenet"],
                "alexnet": ["model=alexnet", "dataset.resize=67", "model.width_divisor=16", "model.head_width=32"]}
HIDDEN_SITES = {"mlp": 2, "lenet": 4, "alexnet": 7}  # the nonlinearities of each network


@pytest.fixture(autouse=True)
def one_thread():
    """On a busy 2-core machine PyTorch's two threads wait on each other: these tiny steps take 100x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@functools.lru_cache(maxsize=None)
def composed(model: str):
    return compose_config(*SMOKE_MODELS[model])


def smoke_config(model: str, **values):
    """The smoke model's config with `model.<key>=<value>` set, as the override would set it, then checked."""
    cfg = copy.deepcopy(composed(model))  # composing costs a few tenths of a second: once per model
    for key, value in values.items():
        OmegaConf.update(cfg, f"model.{key}", value)
    return validate(cfg)


def digits_batch(count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    digits = load_digits()
    images = torch.tensor(digits.images[:count], dtype=torch.float32).unsqueeze(1) / 16
    return images, torch.tensor(digits.target[:count])


def steps_lower_the_loss(model: torch.nn.Module, size: int, steps: int = 5) -> tuple[float, float]:
    """(first, last) loss of `steps` Adam steps on one batch of digits resized to `size`."""
    images, labels = digits_batch()
    images = torch.nn.functional.interpolate(images, size=size, mode="bilinear") if size != 8 else images
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses), losses
    return losses[0], losses[-1]


def test_every_family_with_hidden_nonlinearities_has_the_knob_and_keeps_its_default():
    """The d2l families and the attention models; the recurrent cells keep their tanh and gates."""
    # null: ReLU, so that the CNN runs recorded before the knob keep their config fingerprint (run_dir.py)
    defaults = {"mlp": "relu", "lenet": "sigmoid", "alexnet": None, "vgg": None, "nin": None,
                "googlenet": None, "resnet": None, "densenet": None, "vit": "gelu", "transformer": "relu"}
    for name, activation in defaults.items():
        raw = OmegaConf.load(CONF / "model" / f"{name}.yaml")
        assert (raw.activation, raw.activation_param) == (activation, None), name
    assert activation_factory(None) is torch.nn.ReLU


@pytest.mark.parametrize("model", SMOKE_MODELS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_is_every_hidden_nonlinearity_and_trains(model, activation):
    cfg = smoke_config(model, activation=activation)
    torch.manual_seed(0)
    network = build_model(cfg.model)
    kinds = (torch.nn.ReLU, torch.nn.Sigmoid, torch.nn.Tanh, *(kind.module for kind in ACTIVATIONS.values()))
    sites = [module for module in network.modules() if isinstance(module, kinds)]
    assert len(sites) == HIDDEN_SITES[model] and {type(site) for site in sites} == {ACTIVATIONS[activation].module}
    first, last = steps_lower_the_loss(network, cfg.dataset.input_shape[-1])
    assert last < first


def test_an_activation_parameter_reaches_every_site_and_kaimings_gain():
    cfg = validate(compose_config("model=mlp", "model.hidden=[512,512]", "model.activation=leaky_relu",
                                  "model.activation_param=0.2", "model.init=kaiming_normal"))
    network = build_model(cfg.model)
    slopes = [m.negative_slope for m in network.modules() if isinstance(m, torch.nn.LeakyReLU)]
    assert slopes == [0.2, 0.2]
    hidden = network.net[3].weight  # 512 x 512: He's std is gain / sqrt(fan_in), gain sqrt(2 / (1 + 0.2²))
    assert hidden.std().item() == pytest.approx(math.sqrt(2 / 1.04) / math.sqrt(512), rel=0.02)
    elu = build_model(validate(compose_config("model=resnet", "model.activation=elu",
                                              "model.activation_param=0.5")).model)
    assert {m.alpha for m in elu.modules() if isinstance(m, torch.nn.ELU)} == {0.5}


@pytest.mark.parametrize("overrides, message", [
    (["model=vgg", "model.activation=swish"],
     "model=VGG: activation 'swish' is not one of: relu, sigmoid, tanh, celu, elu, gelu, leaky_relu, prelu, "
     "relu6, selu, silu, softplus, softsign"),
    (["model=mlp", "model.activation=relu", "model.activation_param=0.1"],
     "activation_param=0.1 is given but relu has no parameter; the activations with one: celu (alpha), "
     "elu (alpha), leaky_relu (negative_slope), prelu (init), softplus (beta)"),
    (["model=lenet", "model.activation=softplus", "model.activation_param=0"],
     "activation_param=0 is out of range: softplus's beta must be > 0"),
    (["model=mlp", "model.init=he"],
     "model.init='he' is not one of: default, constant, normal, uniform, xavier_uniform, xavier_normal, "
     "kaiming_uniform, kaiming_normal, xavier, kaiming, standard_normal"),
    (["model=mlp", "model.init=normal", "model.init_param=-0.1"],
     "model.init_param=-0.1 is out of range: model.init=normal's standard deviation must be > 0"),
    (["model=mlp", "model.init_param=0.1"],
     "model.init_param=0.1 is unused by model.init=default (PyTorch's own initialisation); choose a scheme "
     "that takes one: constant (value), normal (standard deviation), uniform (range a of U(-a, a)), "
     "xavier_uniform (gain)"),
    (["model=mlp", "model.init=uniform", "model.init_param=wide"],
     "model.init_param='wide' must be a number: model.init=uniform's range a of U(-a, a)"),
])
def test_bad_choices_are_one_line_naming_the_valid_ones(overrides, message):
    with pytest.raises(ConfigError) as error:
        build_model(validate(compose_config(*overrides)).model)
    assert message in str(error.value) and "\n" not in str(error.value)


def fan_in_and_out(weight: torch.Tensor) -> tuple[int, int]:
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def expected_std(scheme: str, param: float | None, weight: torch.Tensor, gain: float) -> float | None:
    """The standard deviation each scheme gives a weight tensor (None: constant)."""
    fan_in, fan_out = fan_in_and_out(weight)
    defaults = {"normal": 0.01, "uniform": 0.07, "xavier_uniform": 1.0, "xavier_normal": 1.0}
    value = param if param is not None else defaults.get(scheme, gain)
    return {"constant": None, "normal": value, "uniform": value / math.sqrt(3),
            "xavier_uniform": value * math.sqrt(2 / (fan_in + fan_out)),
            "xavier_normal": value * math.sqrt(2 / (fan_in + fan_out)),
            "kaiming_uniform": value / math.sqrt(fan_in), "kaiming_normal": value / math.sqrt(fan_in)}[scheme]


@pytest.mark.parametrize("scheme", [scheme for scheme in INIT_SCHEMES if scheme != "default"])
@pytest.mark.parametrize("param", [None, 0.3])
def test_every_init_sets_the_weights_it_names_and_zero_biases(scheme, param):
    """On a wide tanh MLP (Kaiming's gain 5/3 from the activation), every linear layer's statistics."""
    overrides = ["model=mlp", "model.hidden=[400,300]", "model.activation=tanh", f"model.init={scheme}"]
    overrides += [f"model.init_param={param}"] if param is not None else []
    network = build_model(validate(compose_config(*overrides)).model)
    for layer in (m for m in network.modules() if isinstance(m, torch.nn.Linear)):
        assert (layer.bias == 0).all()
        std = expected_std(scheme, param, layer.weight, gain=5 / 3)
        if std is None:
            assert (layer.weight == (0.01 if param is None else param)).all()
        else:
            assert layer.weight.std().item() == pytest.approx(std, rel=0.1), layer
            assert abs(layer.weight.mean().item()) < 0.1 * std
        if scheme.endswith("uniform") or scheme == "uniform":
            assert layer.weight.abs().max().item() <= math.sqrt(3) * std * (1 + 1e-6)


@pytest.mark.parametrize("model", SMOKE_MODELS)
@pytest.mark.parametrize("scheme", [*INIT_SCHEMES, *ALIASES])
def test_every_init_trains_the_smoke_models(model, scheme):
    cfg = smoke_config(model, init=scheme)
    torch.manual_seed(0)
    first, last = steps_lower_the_loss(build_model(cfg.model), cfg.dataset.input_shape[-1])
    assert last < first or scheme == "constant"  # equal weights: every unit of a layer learns the same, if at all


def test_old_names_build_what_they_built():
    """xavier, kaiming and standard_normal: Glorot uniform gain 1, He uniform with ReLU's gain, N(0, 1)."""
    for alias, (scheme, param) in ALIASES.items():
        torch.manual_seed(0)
        old = build_model(validate(compose_config("model=gru", "model.hidden_size=16", f"model.init={alias}")).model)
        torch.manual_seed(0)
        overrides = [f"model.init={scheme}"] + ([f"model.init_param={param}"] if param is not None else [])
        new = build_model(validate(compose_config("model=gru", "model.hidden_size=16", *overrides)).model)
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))
    torch.manual_seed(0)
    kaiming = build_model(validate(compose_config("model=mlp", "model.init=kaiming")).model)
    torch.manual_seed(0)
    reference = build_model(validate(compose_config("model=mlp")).model)
    for layer in (m for m in reference.modules() if isinstance(m, torch.nn.Linear)):
        torch.nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")  # what `kaiming` always did
        torch.nn.init.zeros_(layer.bias)
    assert all(torch.equal(a, b) for a, b in zip(kaiming.state_dict().values(), reference.state_dict().values()))


def test_runs_recorded_before_the_knobs_keep_their_config_fingerprint():
    """An AlexNet run's config from before `activation`, `activation_param` and `init_param` existed (the keys
    absent) has the fingerprint today's config has: it still continues in place (tests/test_old_runs.py: an MLP)."""
    today = validate(compose_config("model=alexnet"))
    before = copy.deepcopy(today)
    for key in ("activation", "activation_param", "init_param"):
        del before.model[key]
    assert config_fingerprint(before) == config_fingerprint(today)
    gelu = copy.deepcopy(today)
    gelu.model.activation = "gelu"
    assert config_fingerprint(gelu) != config_fingerprint(today)
