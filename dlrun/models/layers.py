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


def classifier_head(in_features: int, width: int, num_outputs: int, dropout: float) -> nn.Sequential:
    """AlexNet's and VGG's head: two ReLU hidden layers of `width`, dropout after each (d2l 0.5)."""
    layers: list[nn.Module] = [nn.Flatten()]
    for size_in in (in_features, width):
        layers += [nn.Linear(size_in, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(width, num_outputs))
    return nn.Sequential(*layers)


def conv_relu(in_channels: int, out_channels: int, batch_norm: bool, **conv_args: int) -> list[nn.Module]:
    """Conv2d, then BatchNorm2d when asked, then ReLU: the unit most CNN families repeat."""
    norm = [nn.BatchNorm2d(out_channels)] if batch_norm else []
    return [nn.Conv2d(in_channels, out_channels, **conv_args), *norm, nn.ReLU()]


def stem_7x7(in_channels: int) -> list[nn.Module]:
    """d2l's first block of ResNet and DenseNet: 7x7/2 conv to 64 channels, batch norm, ReLU, 3x3/2 max-pool."""
    return [nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1)]
