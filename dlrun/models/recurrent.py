"""RNN, GRU and LSTM networks (d2l 9-10) for sequences, images read row by row, and language models.

Input contract, from the dataset's `input_shape` and `task`:
- `[T]` with task `language_model`: LongTensor token ids (B, T); `num_outputs` is the vocabulary
  size; tokens are one-hot encoded (as d2l) and the output is per-step logits (B, T, V).
  `bidirectional=true` is accepted with a warning: it cheats (d2l 9.4's lesson).
- `[T]` otherwise: floats (B, T), T steps of one feature.
- `[T, F]`: floats (B, T, F).
- `[C, H, W]` (images): H steps of C*W features (each row is one step).
Any task but language modelling gets the prediction after the last step: (B, num_outputs).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from dlrun.models import layers

log = logging.getLogger(__name__)

LANGUAGE_MODEL = "language_model"
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentNet(nn.Module):
    """A stack of `cell` layers (nn.RNN, nn.GRU or nn.LSTM) and a linear output layer.

    `dropout` is applied between stacked layers (PyTorch's own dropout site), so it needs
    `num_layers` >= 2. `forward(inputs, state=None, return_state=False)` returns the outputs,
    or `(outputs, new_state)` so a language model can carry the state across batches.
    """

    cell: type[nn.RNNBase]

    def __init__(self, input_shape: list[int], num_outputs: int, task: str = "classification",
                 hidden_size: int = 256, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2, 3):
            raise ValueError(f"input_shape {list(input_shape)} is not one of: [T], [T, F], [C, H, W]")
        if hidden_size < 1 or num_layers < 1:
            raise ValueError(f"hidden_size and num_layers must be >= 1, got {hidden_size} and {num_layers}")
        self.language_model = task == LANGUAGE_MODEL
        if self.language_model and len(input_shape) != 1:
            raise ValueError(f"a language model reads token ids of shape [T], got input_shape {list(input_shape)}")
        if self.language_model and bidirectional:
            # Allowed, because d2l 9.4 trains exactly this to show why it fails (recipe
            # d2l/bidirectional_lstm); the user is told what the numbers will mean.
            log.warning("%s: a bidirectional language model's backward direction reads the very token it has to "
                        "predict, so its perplexity is deceptively low and the text it generates (which has no "
                        "future to read) is nonsense (d2l 9.4)", type(self).__name__)
        if dropout > 0 and num_layers == 1:
            log.warning("%s: dropout=%s applies between stacked layers; with num_layers=1 it is unused",
                        type(self).__name__, dropout)
        self.input_shape = list(input_shape)
        self.vocab_size = num_outputs if self.language_model else None
        features = self.vocab_size if self.language_model else layers.features_per_step(self.input_shape)
        self.rnn = self.cell(features, hidden_size, num_layers=num_layers, batch_first=True,
                             bidirectional=bidirectional, dropout=dropout if num_layers > 1 else 0.0)
        self.directions = 2 if bidirectional else 1
        self.output = nn.Linear(hidden_size * self.directions, num_outputs)

    def as_steps(self, inputs: torch.Tensor) -> torch.Tensor:
        """(B, T, features) floats from the dataset's inputs, per the module's input contract."""
        if self.language_model:
            return F.one_hot(inputs.long(), self.vocab_size).float()
        return layers.as_steps(inputs)

    def forward(self, inputs: torch.Tensor, state: State | None = None,
                return_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, State]:
        steps, new_state = self.rnn(self.as_steps(inputs), state)
        if self.language_model:
            outputs = self.output(steps)  # (B, T, V)
        else:
            # the last layer's final hidden state in each direction (both ends for bidirectional)
            hidden = new_state[0] if isinstance(new_state, tuple) else new_state
            outputs = self.output(hidden[-self.directions:].transpose(0, 1).flatten(1))
        return (outputs, new_state) if return_state else outputs


class RNN(RecurrentNet):
    """Elman RNN with tanh (d2l 9.6)."""

    cell = nn.RNN


class GRU(RecurrentNet):
    """Gated recurrent units (d2l 10.2)."""

    cell = nn.GRU


class LSTM(RecurrentNet):
    """Long short-term memory (d2l 10.1)."""

    cell = nn.LSTM
