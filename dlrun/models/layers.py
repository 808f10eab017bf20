"""Small building blocks shared by the model families: the activation knob, and the units CNNs repeat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn


@dataclass(frozen=True)
class ActivationKind:
    """One choice of `model.activation`: its module, and the name and default of its one parameter, if any."""

    module: type[nn.Module]
    param: Optional[str] = None  # the constructor argument `model.activation_param` sets
    default: Optional[float] = None  # PyTorch's default for it
    positive: bool = False  # whether the parameter must be > 0


# `model.activation` on every family: d2l 5.1's functions, the ELU family, and the smooth ones of later
# chapters (GELU for Transformers, SiLU/swish). Order: d2l's first three, then alphabetical.
ACTIVATIONS: dict[str, ActivationKind] = {
    "relu": ActivationKind(nn.ReLU),
    "sigmoid": ActivationKind(nn.Sigmoid),
    "tanh": ActivationKind(nn.Tanh),
    "celu": ActivationKind(nn.CELU, "alpha", 1.0, positive=True),
    "elu": ActivationKind(nn.ELU, "alpha", 1.0),
    "gelu": ActivationKind(nn.GELU),
    "leaky_relu": ActivationKind(nn.LeakyReLU, "negative_slope", 0.01),
    "prelu": ActivationKind(nn.PReLU, "init", 0.25),  # the slope is learned; the parameter is its start
    "relu6": ActivationKind(nn.ReLU6),
    "selu": ActivationKind(nn.SELU),
    "silu": ActivationKind(nn.SiLU),
    "softplus": ActivationKind(nn.Softplus, "beta", 1.0, positive=True),
    "softsign": ActivationKind(nn.Softsign),
}
Activation = Callable[[], nn.Module]  # makes a fresh activation module for each site


def activation_factory(name: Optional[str], param: Optional[float] = None) -> Activation:
    """A maker of `name`'s module with `param` as its one parameter (None: PyTorch's default).

    `name` None is ReLU, the book's choice for its CNNs (their YAML say null, so that the runs
    recorded before the knob existed keep their config fingerprint). Checked once, here: an
    unknown name, or a parameter given to a function without one (or out of its range), is a
    ValueError that lists the valid choices.
    """
    name = "relu" if name is None else name
    kind = ACTIVATIONS.get(name)
    if kind is None:
        raise ValueError(f"activation {name!r} is not one of: {', '.join(ACTIVATIONS)}")
    if param is None:
        return kind.module
    if kind.param is None:
        with_param = ", ".join(f"{key} ({value.param})" for key, value in ACTIVATIONS.items() if value.param)
        raise ValueError(f"activation_param={param} is given but {name} has no parameter; the activations with "
                         f"one: {with_param}")
    if kind.positive and param <= 0:
        raise ValueError(f"activation_param={param} is out of range: {name}'s {kind.param} must be > 0")
    return lambda: kind.module(**{kind.param: param})


def features_per_step(input_shape: list[int]) -> int:
    """Features per step when a sequence model reads `input_shape` (see `as_steps`)."""
    if len(input_shape) == 1:
        return 1
    if len(input_shape) == 2:
        return input_shape[1]
    channels, _, width = input_shape
    return channels * width


def as_steps(inputs: torch.Tensor) -> torch.Tensor:
    """(B, T, features) from a batch of [T] (one feature per step), [T, F], or [C, H, W] images (one row per step)."""
    if inputs.dim() == 2:
        return inputs.unsqueeze(-1)
    if inputs.dim() == 4:  # (B, C, H, W) → (B, H, C*W)
        return inputs.permute(0, 2, 1, 3).flatten(2)
    return inputs


def divide_width(channels: int, divisor: int) -> int:
    """`channels // divisor`, at least 1 (d2l's `ratio` for narrow VGGs); the divisor must be >= 1."""
    if divisor < 1:
        raise ValueError(f"width_divisor must be >= 1, got {divisor}")
    return max(1, channels // divisor)


def dry_run_shape(features: nn.Module, input_shape: list[int], model_name: str) -> torch.Size:
    """Shape `features` outputs for one example of `input_shape` (a dry forward in eval mode).

    Sizes the first linear layer of the CNNs and checks that the input is large enough: an
    image that the strided convolutions and poolings shrink to nothing is a ValueError that
    names the model and the way out, instead of a shape error deep inside PyTorch.
    """
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            return features(torch.zeros(1, *input_shape)).shape[1:]
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"input shape {list(input_shape)} is too small for {model_name} ({reason}); "
                         "resize the images with dataset.resize (default: model.input_size)") from None
    finally:
        features.train(was_training)


def flat_features(features: nn.Module, input_shape: list[int], model_name: str = "this model") -> int:
    """Number of features `features` outputs for one example of `input_shape`, flattened."""
    return dry_run_shape(features, input_shape, model_name).numel()


def classifier_head(in_features: int, width: int, num_outputs: int, dropout: float,
                    act: Activation = nn.ReLU) -> nn.Sequential:
    """AlexNet's and VGG's head: two hidden layers of `width` (ReLU in d2l), dropout after each (d2l 0.5)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for size_in in (in_features, width):
        layers += [nn.Linear(size_in, width), act()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def conv_relu(in_channels: int, out_channels: int, batch_norm: bool, act: Activation = nn.ReLU,
              **conv_args: int) -> list[nn.Module]:
    """Conv2d, then BatchNorm2d when asked, then the activation (ReLU in d2l): the unit most CNN families repeat."""
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return [nn.Conv2d(in_channels, out_channels, **conv_args), *norm, act()]


def stem_7x7(in_channels: int, act: Activation = nn.ReLU) -> list[nn.Module]:
    """d2l's first block of ResNet and DenseNet: 7x7/2 conv to 64 channels, batch norm, ReLU, 3x3/2 max-pool."""
    return [nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), act(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
