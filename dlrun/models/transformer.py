"""A Transformer (d2l 11.7-11.9) on PyTorch's layers: a decoder-only language model, or a sequence encoder.

Input contract, from the dataset's `input_shape` and `task` (as the recurrent models'):
- `[T]` with task `language_model`: LongTensor token ids (B, T); `num_outputs` is the vocabulary
  size; the output is per-step logits (B, T, V), each step attending to itself and the steps before
  it (a causal mask: GPT's decoder-only design, d2l 11.9).
- otherwise `[T]` (one feature per step: a sequence, or a table's columns), `[T, F]`, or
  `[C, H, W]` images read row by row: the steps attend to each other freely, and the mean of the
  last block's outputs gives the prediction (B, num_outputs).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from dlrun.models import layers
from dlrun.models.attention import causal_mask, encoder_blocks, positions as make_positions

LANGUAGE_MODEL = "language_model"


class Transformer(nn.Module):
    """Embedding + positions → `num_layers` pre-norm blocks → LayerNorm → Linear.

    The defaults are d2l 11.7's: `hidden_size` 256, 4 heads, an MLP of 64 with ReLU, 2 blocks,
    sinusoidal positions (`positions=learned`: a learned vector per step). As a language model
    it embeds tokens with `nn.Embedding` (not scaled by √hidden_size as d2l 11.7's post-norm
    encoder does: in these pre-norm blocks the scaled embeddings drown what the blocks add, and
    the model learned more slowly), and `forward(ids, state=None, return_state=False)` follows
    the recurrent models' contract: the state is the token ids it has read, at most `context` of
    them (null: the dataset's window). A call with a state reads them before the new ids, up to
    `context` in all: that is how a text is continued one token at a time. A call of `context`
    ids or more, or with a state of another batch size, starts afresh: in training, with
    `context` equal to the window, each window is a sample of its own. A plain call
    `model(ids)` (no state asked for, as an exported model is called) lets every step attend to
    all the steps before it, however many.
    """

    def __init__(self, input_shape: list[int], num_outputs: int, task: str = "classification",
                 hidden_size: int = 256, mlp_size: int = 64, num_heads: int = 4, num_layers: int = 2,
                 dropout: float = 0.0, positions: str = "sinusoidal", context: Optional[int] = None,
                 activation: str = "relu", activation_param: Optional[float] = None) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2, 3):
            raise ValueError(f"input_shape {list(input_shape)} is not one of: [T], [T, F], [C, H, W]")
        self.language_model = task == LANGUAGE_MODEL
        if self.language_model and len(input_shape) != 1:
            raise ValueError(f"a language model reads token ids of shape [T], got input_shape {list(input_shape)}")
        if context is not None and (not self.language_model or context < 1):
            raise ValueError(f"context={context}: the number of tokens a language model reads (>= 1); "
                             "other tasks read their whole input: leave it null")
        steps = input_shape[1] if len(input_shape) == 3 else input_shape[0]  # rows of an image
        self.context = context or steps
        act = layers.activation_factory(activation, activation_param)
        if self.language_model:
            self.embedding: nn.Module = nn.Embedding(num_outputs, hidden_size)
        else:
            self.embedding = nn.Linear(layers.features_per_step(input_shape), hidden_size)
        self.positions = make_positions(positions, self.context, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.blocks = encoder_blocks(hidden_size, num_heads, mlp_size, num_layers, dropout, act)
        self.norm = nn.LayerNorm(hidden_size)  # pre-norm blocks leave their output unnormalised
        self.output = nn.Linear(hidden_size, num_outputs)

    def forward(self, inputs: torch.Tensor, state: Optional[torch.Tensor] = None,
                return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, Optional[torch.Tensor]]:
        if not self.language_model:
            encoded = self._encode(self.embedding(layers.as_steps(inputs)), causal=False)
            outputs = self.output(self.norm(encoded).mean(dim=1))
            return (outputs, None) if return_state else outputs
        if return_state:
            return self._read(inputs, state)
        return self._decode(inputs)  # every step attends to all earlier ones, however many (an exported model)

    def _read(self, ids: torch.Tensor, state: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, the last `context` ids): `ids` read after the state, no step seeing more than `context` ids.

        `context` ids or more start afresh, as every training window does; past the first `context`,
        the window slides one token at a time (the reading a prefix longer than the window gets).
        """
        steps = ids.shape[1]
        if state is not None and steps < self.context and state.shape[0] == ids.shape[0]:
            window = torch.cat([state.to(ids.device), ids], dim=1)[:, -self.context:]
            return self._decode(window)[:, -steps:], window
        window = ids[:, :self.context]
        logits = [self._decode(window)]
        for step in range(self.context, steps):
            window = torch.cat([window[:, 1:], ids[:, step:step + 1]], dim=1)
            logits.append(self._decode(window)[:, -1:])
        return torch.cat(logits, dim=1), window

    def _decode(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids → (B, T, V) logits, each step seeing only itself and the steps before it."""
        return self.output(self.norm(self._encode(self.embedding(ids), causal=True)))

    def _encode(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        """(B, T, hidden_size) embeddings → the same shape: positions added, through the blocks."""
        x = self.dropout(self.positions(x))
        mask = causal_mask(x.shape[1], x.device) if causal else None
        for block in self.blocks:
            x = block(x, src_mask=mask, is_causal=causal)
        return x
