"""Multilayer perceptron (d2l 5.1-5.6); with no hidden layers it is softmax/linear regression."""

from __future__ import annotations

import math

from torch import nn

from dlrun.models.layers import activation_factory


class MLP(nn.Module):
    """Flatten → [Linear → activation → Dropout] per hidden size → Linear(num_outputs)."""

    def __init__(
        self,
        input_shape: list[int],
        num_outputs: int,
        hidden: list[int] | None = None,
        activation: str = "relu",
        dropout: float | list[float] = 0.0,
        activation_param: float | None = None,
    ) -> None:
        super().__init__()
        act = activation_factory(activation, activation_param)
        hidden = list(hidden or [])
        # One rate per hidden layer (d2l's 0.2/0.5 recipe) or one rate for all.
        rates = list(dropout) if isinstance(dropout, (list, tuple)) else [dropout] * len(hidden)
        if len(rates) != len(hidden):
            raise ValueError(f"{len(rates)} dropout rates for {len(hidden)} hidden layers")
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(input_shape)
        for size, rate in zip(hidden, rates):
            layers += [nn.Linear(width, size), act()]
            if rate > 0:
                layers.append(nn.Dropout(rate))
            width = size
        layers.append(nn.Linear(width, num_outputs))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)
