"""Weight initialisation selectable with `model.init` and its one number `model.init_param` (d2l 5.4).

`constant` (the value), `normal` (σ), `uniform` (a of U(-a, a)), Glorot's `xavier_uniform` and
`xavier_normal` and He's `kaiming_uniform` and `kaiming_normal` (a gain; He's defaults to the
activation's, `gain_for`) set the weight matrices of linear, convolutional, recurrent and
attention layers, and their biases to zero (as d2l's `init_normal`/`init_constant` do); `default`
keeps every layer's own. Norm layers, embeddings, class tokens and position embeddings keep
theirs. Older names stay accepted (`ALIASES`). docs/training.md#activations-and-initialisation
has the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from dlrun.errors import ConfigError
from dlrun.models.layers import ACTIVATIONS

# name → the default of its parameter, and what the parameter is (for the messages)
INIT_SCHEMES: dict[str, tuple[Optional[float], str]] = {
    "default": (None, ""),
    "constant": (0.01, "value"),
    "normal": (0.01, "standard deviation"),
    "uniform": (0.07, "range a of U(-a, a)"),
    "xavier_uniform": (1.0, "gain"),
    "xavier_normal": (1.0, "gain"),
    "kaiming_uniform": (None, "gain"),  # None: the activation's gain
    "kaiming_normal": (None, "gain"),
}
# Names accepted before the schemes above existed: saved configs keep building.
ALIASES: dict[str, tuple[str, Optional[float]]] = {
    "xavier": ("xavier_uniform", None),
    "kaiming": ("kaiming_uniform", None),
    "standard_normal": ("normal", 1.0),
}
# PyTorch's `calculate_gain` names for the activations of models.layers.ACTIVATIONS. It knows relu,
# leaky_relu, tanh, sigmoid and selu; the other ReLU-like functions take ReLU's √2, softsign (which
# saturates slower than tanh) the linear 1. SELU takes the linear gain too: LeCun's initialisation, which
# its self-normalisation assumes (PyTorch's `calculate_gain` documentation says the same).
GAIN_NONLINEARITY = {"relu": "relu", "relu6": "relu", "elu": "relu", "celu": "relu", "gelu": "relu",
                     "silu": "relu", "softplus": "relu", "leaky_relu": "leaky_relu", "prelu": "leaky_relu",
                     "tanh": "tanh", "sigmoid": "sigmoid", "selu": "linear", "softsign": "linear"}


def gain_for(activation: Optional[str], activation_param: Optional[float] = None) -> float:
    """Kaiming's gain for a model whose hidden layers use `activation` (None: a model without the knob: ReLU's)."""
    nonlinearity = GAIN_NONLINEARITY.get(activation or "relu", "relu")
    if nonlinearity == "leaky_relu":  # leaky_relu, prelu: their negative slope (at the start, for prelu)
        slope = activation_param if activation_param is not None else ACTIVATIONS[activation].default
        return nn.init.calculate_gain("leaky_relu", slope)
    return nn.init.calculate_gain(nonlinearity)


@dataclass(frozen=True)
class Init:
    """A checked `model.init` choice: the scheme (aliases resolved) and its parameter (None: the default)."""

    scheme: str
    param: Optional[float] = None

    @classmethod
    def from_config(cls, name: Any, param: Any = None) -> "Init":
        """Resolve an alias and check the parameter; a bad name or value is one ConfigError line."""
        if name in ALIASES:
            name, alias_param = ALIASES[name]
            param = alias_param if param is None else param
        if name not in INIT_SCHEMES:
            raise ConfigError(f"model.init={name!r} is not one of: {', '.join([*INIT_SCHEMES, *ALIASES])}")
        meaning = INIT_SCHEMES[name][1]
        if param is not None:
            if name == "default":
                raise ConfigError(f"model.init_param={param} is unused by model.init=default (PyTorch's own "
                                  "initialisation); choose a scheme that takes one: "
                                  + ", ".join(f"{key} ({value[1]})" for key, value in INIT_SCHEMES.items() if value[1]))
            if isinstance(param, bool) or not isinstance(param, (int, float)):
                raise ConfigError(f"model.init_param={param!r} must be a number: model.init={name}'s {meaning}")
            if name != "constant" and not param > 0:
                raise ConfigError(f"model.init_param={param} is out of range: model.init={name}'s {meaning} "
                                  "must be > 0")
        return cls(name, None if param is None else float(param))

    def apply(self, model: nn.Module, activation: Optional[str] = None,
              activation_param: Optional[float] = None) -> None:
        """Re-initialise the model's weight matrices (biases to zero); `default` leaves the model as built.

        `activation` (the model's `model.activation`, if it has the knob) gives Kaiming's gain.
        """
        if self.scheme == "default":
            return
        value = self.param if self.param is not None else INIT_SCHEMES[self.scheme][0]
        if self.scheme.startswith("kaiming") and value is None:
            value = gain_for(activation, activation_param)
        for weights, biases in _weights_and_biases(model):
            for weight in weights:
                _fill(weight, self.scheme, value)
            for bias in biases:
                nn.init.zeros_(bias)


def _fill(weight: torch.Tensor, scheme: str, value: float) -> None:
    """Set `weight` in place by `scheme`, whose one number is `value` (a constant, σ, a range or a gain)."""
    if scheme == "constant":
        nn.init.constant_(weight, value)
    elif scheme == "normal":
        nn.init.normal_(weight, std=value)
    elif scheme == "uniform":
        nn.init.uniform_(weight, -value, value)
    elif scheme == "xavier_uniform":
        nn.init.xavier_uniform_(weight, gain=value)
    elif scheme == "xavier_normal":
        nn.init.xavier_normal_(weight, gain=value)
    else:  # Kaiming with any gain: PyTorch's kaiming_* take a nonlinearity's name, not a number
        std = value / math.sqrt(_fan_in(weight))
        if scheme == "kaiming_uniform":
            bound = math.sqrt(3.0) * std  # as PyTorch's kaiming_uniform_ computes it: the same weights for ReLU
            nn.init.uniform_(weight, -bound, bound)
        else:
            nn.init.normal_(weight, std=std)


def _fan_in(weight: torch.Tensor) -> int:
    """Inputs per output unit: columns of a matrix, times the kernel's area for a convolution."""
    return weight.shape[1] * math.prod(weight.shape[2:])


def _weights_and_biases(model: nn.Module) -> list[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """(weight matrices, biases) per layer that `Init.apply` sets: linear, convolutional, recurrent and attention."""
    layers = []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            # an attention layer's output projection is a Linear too (NonDynamicallyQuantizableLinear)
            weights, biases = [module.weight], [module.bias]
        elif isinstance(module, nn.RNNBase):  # weight_ih_l0, weight_hh_l0, bias_ih_l0, ...
            weights = [p for n, p in module.named_parameters() if n.startswith("weight")]
            biases = [p for n, p in module.named_parameters() if n.startswith("bias")]
        elif isinstance(module, nn.MultiheadAttention):
            # the query, key and value projections, packed in one matrix unless kdim/vdim differ
            weights = [getattr(module, n) for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight",
                                                    "v_proj_weight")]
            biases = [module.in_proj_bias]  # bias_k/bias_v (add_bias_kv) are extra key/value rows, not biases
        else:
            continue
        layers.append(([w for w in weights if w is not None], [b for b in biases if b is not None]))
    return layers
