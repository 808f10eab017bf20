"""What the attention models share (d2l 11.6-11.8): pre-norm Transformer blocks on PyTorch's own layers,
sinusoidal and learned positions, and a class token."""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrun.models.layers import Activation

POSITIONS = ("sinusoidal", "learned")


def encoder_blocks(hidden_size: int, num_heads: int, mlp_size: int, num_layers: int, dropout: float,
                   act: Activation) -> nn.ModuleList:
    """`num_layers` pre-norm blocks: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) (d2l 11.8's ViTBlock).

    Each is PyTorch's `nn.TransformerEncoderLayer(norm_first=True)`: multi-head self-attention on the fused
    scaled-dot-product kernel, an MLP of `mlp_size` with the activation between its two linear layers, and
    `dropout` on the attention weights and after the attention, inside and after the MLP.
    """
    if hidden_size < 1 or num_heads < 1 or mlp_size < 1 or num_layers < 1:
        raise ValueError(f"hidden_size, num_heads, mlp_size and num_layers must be >= 1, got {hidden_size}, "
                         f"{num_heads}, {mlp_size} and {num_layers}")
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size={hidden_size} must be a multiple of num_heads={num_heads}: "
                         "each head attends in hidden_size / num_heads dimensions")
    return nn.ModuleList(
        nn.TransformerEncoderLayer(hidden_size, num_heads, mlp_size, dropout, activation=act(), batch_first=True,
                                   norm_first=True)
        for _ in range(num_layers))


def causal_mask(steps: int, device: torch.device) -> torch.Tensor:
    """(steps, steps) additive mask: -inf above the diagonal, so that a position attends to itself and earlier ones."""
    return torch.full((steps, steps), float("-inf"), device=device).triu(1)


class SinusoidalPositions(nn.Module):
    """Adds d2l 11.6's fixed encoding: P[i, 2j] = sin(i / 10000^(2j/d)), P[i, 2j+1] = cos(i / 10000^(2j/d)).

    Computed for the length it is given, so any number of steps works. No parameters.
    """

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        frequencies = torch.exp(-math.log(10000.0) * torch.arange(0, hidden_size, 2) / hidden_size)
        self.register_buffer("frequencies", frequencies, persistent=False)  # follows from hidden_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps = torch.arange(x.shape[1], device=x.device, dtype=self.frequencies.dtype)
        angles = steps[:, None] * self.frequencies[None, :]
        table = torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1)[:, :self.hidden_size]
        return x + table.to(x.dtype)


class LearnedPositions(nn.Module):
    """Adds a learned vector per position (d2l 11.8's ViT: N(0, 0.02²) to start); at most `num_positions` steps."""

    def __init__(self, num_positions: int, hidden_size: int) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.weight = nn.Parameter(torch.randn(1, num_positions, hidden_size) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.num_positions:
            raise ValueError(f"{x.shape[1]} steps, but the learned positions cover {self.num_positions}; "
                             "use sinusoidal positions (model.positions=sinusoidal) for longer inputs")
        return x + self.weight[:, :x.shape[1]]


class ClassToken(nn.Module):
    """Puts a learned token in front of the sequence (d2l 11.8: zeros to start); its output feeds the head."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, 1, hidden_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.weight.expand(x.shape[0], -1, -1), x], dim=1)


def positions(kind: str, num_positions: int, hidden_size: int) -> nn.Module:
    """The position module `model.positions` names; the error lists the choices."""
    if kind not in POSITIONS:
        raise ValueError(f"positions {kind!r} is not one of: {', '.join(POSITIONS)}")
    return SinusoidalPositions(hidden_size) if kind == "sinusoidal" else LearnedPositions(num_positions, hidden_size)
