"""Small building blocks shared by the model families."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name; the error lists the valid names."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation {name!r} is not one of: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def flat_features(features: nn.Module, input_shape: list[int]) -> int:
    """Number of features `features` outputs for one example of `input_shape` (a dry forward)."""
    with torch.no_grad():
        was_training = features.training
        features.eval()
        size = features(torch.zeros(1, *input_shape)).flatten(1).shape[1]
        features.train(was_training)
    return size
