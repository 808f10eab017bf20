"""A minimal recurrent language model following dlrun's recurrent-model contract, for tests.

ids (B, T) → logits (B, T, V); `forward(inputs, state=None, return_state=False)` returns the
logits, or (logits, new_state). It also records the states it was handed, so tests can check
how the task carries them.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyRNN(nn.Module):
    def __init__(self, input_shape: list[int], num_outputs: int, hidden_size: int = 32, **_: object) -> None:
        super().__init__()
        self.embedding = nn.Embedding(num_outputs, hidden_size)
        self.rnn = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.head = nn.Linear(hidden_size, num_outputs)
        self.received_states: list = []

    def forward(self, inputs: torch.Tensor, state: torch.Tensor | None = None, return_state: bool = False):
        self.received_states.append(state)
        hidden, new_state = self.rnn(self.embedding(inputs), state)
        outputs = self.head(hidden)
        return (outputs, new_state) if return_state else outputs
