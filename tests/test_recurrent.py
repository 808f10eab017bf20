"""The recurrent models' input contract: sequences, images row by row, language-model token ids."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dlrun.models.recurrent import GRU, LSTM, RNN


@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
@pytest.mark.parametrize("input_shape, batch", [
    ([5], torch.rand(3, 5)),               # T steps of one feature
    ([5, 4], torch.rand(3, 5, 4)),         # T steps of F features
    ([2, 6, 4], torch.rand(3, 2, 6, 4)),   # image: H=6 steps of C*W=8 features
])
def test_classification_reads_every_layout_and_predicts_after_the_last_step(cls, input_shape, batch):
    model = cls(input_shape, num_outputs=7, hidden_size=8, num_layers=2, bidirectional=True)
    assert model.rnn.input_size == {1: 1, 2: 4, 3: 8}[len(input_shape)]
    outputs, state = model(batch, return_state=True)
    assert outputs.shape == (3, 7)
    hidden = state[0] if isinstance(state, tuple) else state
    assert hidden.shape == (2 * 2, 3, 8)  # layers x directions, batch, hidden


def test_image_rows_are_the_steps():
    model = GRU([1, 3, 2], num_outputs=2, hidden_size=4)
    image = torch.arange(6.0).reshape(1, 1, 3, 2)
    assert model.as_steps(image).tolist() == [[[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]]


@pytest.mark.parametrize("cls", [RNN, GRU, LSTM])
def test_language_model_gives_per_step_logits_and_carries_state(cls):
    model = cls([6], num_outputs=11, task="language_model", hidden_size=8)
    tokens = torch.randint(0, 11, (2, 6))
    logits, state = model(tokens, return_state=True)
    assert logits.shape == (2, 6, 11)
    # carrying the state across two halves equals reading the whole sequence at once
    first, middle = model(tokens[:, :3], return_state=True)
    second = model(tokens[:, 3:], state=middle)
    torch.testing.assert_close(torch.cat([first, second], dim=1), logits)


def test_bidirectional_language_model_is_built_with_a_warning(caplog):
    """d2l 9.4 trains one to show why it fails; the user is told, not refused."""
    model = LSTM([6], num_outputs=11, task="language_model", hidden_size=8, num_layers=2, bidirectional=True)
    assert "deceptively low" in caplog.text and "nonsense" in caplog.text
    logits, (hidden, _) = model(torch.randint(0, 11, (3, 6)), return_state=True)
    assert logits.shape == (3, 6, 11) and hidden.shape == (2 * 2, 3, 8)
    # the output at step t depends on the token at t+1: the backward direction has read it
    tokens = torch.randint(0, 11, (1, 6))
    changed = tokens.clone()
    changed[0, 3] = (tokens[0, 3] + 1) % 11
    assert not torch.allclose(model(tokens)[0, 2], model(changed)[0, 2])


def test_gru_language_model_learns_a_repeating_text():
    """A short real training run: perplexity on a periodic token stream falls far below the vocabulary."""
    torch.manual_seed(0)
    vocab, steps = 8, 12
    stream = torch.tensor([0, 3, 1, 4, 1, 5, 2, 6, 7] * 40)
    starts = torch.arange(0, len(stream) - steps - 1, 3)
    inputs = torch.stack([stream[s:s + steps] for s in starts])
    targets = torch.stack([stream[s + 1:s + steps + 1] for s in starts])
    model = GRU([steps], num_outputs=vocab, task="language_model", hidden_size=32)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(60):
        loss = F.cross_entropy(model(inputs).reshape(-1, vocab), targets.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # the first token of a window is unpredictable, the rest follow: perplexity near 1 (chance: 8)
    assert math.exp(loss.item()) < 1.5
