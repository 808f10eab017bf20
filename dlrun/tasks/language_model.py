"""Language models: next-token cross-entropy, perplexity, carried recurrent state, generated text."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.tasks.base import Task, as_float32, count_tensor

if TYPE_CHECKING:
    from dlrun.data.build import Data


class LanguageModel(Task):
    """Next-token cross-entropy over every position; perplexity (exp of the mean loss), lower is better.

    The model is called as `model(ids, state=..., return_state=True)` → (logits (B, T, V), state).
    With sequential sampling the state is carried from batch to batch, detached so gradients
    stop at the batch boundary (truncated backpropagation through time); with random sampling
    every batch starts from a fresh state. Every pass starts fresh. Gradients are clipped to
    norm 1 unless regularization.grad_clip says otherwise (d2l 8.5). Speed is also reported in
    d2l's unit, tokens/s: every example is a window of `tokens_per_example` predicted tokens.
    """

    metric, mode = "ppl", "min"
    default_grad_clip = 1.0

    def __init__(self, tokens: list[str], separator: str, sample_prefix: list[int], carry_state: bool,
                 sample_length: int = 50, tokens_per_example: int = 1) -> None:
        self.tokens = tokens
        self.separator = separator
        self.sample_prefix = sample_prefix or [1 if len(tokens) > 1 else 0]  # else: the most frequent token
        self.carry_state = carry_state
        self.sample_length = sample_length
        self.tokens_per_example = tokens_per_example
        self.state: Any = None

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "LanguageModel":
        extras = data.extras
        # input_shape is [num_steps]: the window length, every position of which is predicted
        return cls(extras["tokens"], extras["separator"], extras["sample_prefix"], carry_state=data.sequential,
                   tokens_per_example=int(cfg.dataset.input_shape[0]))

    def start_pass(self, training: bool) -> None:
        self.state = None

    def carried_state(self) -> Any:
        return self.state

    def restore_carried_state(self, state: Any) -> None:
        self.state = state

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor,
                targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        outputs, state = model(inputs, state=self.state, return_state=True)
        self.state = _detached(state) if self.carry_state else None
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x tokens, tokens]."""
        return torch.stack([as_float32(loss) * targets.numel(), count_tensor(targets.numel(), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, count = stats
        loss = loss_sum / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}  # exp overflows a float past ~709

    def epoch_texts(self, model: torch.nn.Module) -> dict[str, str]:
        return {"sample": self.generate(model)}


    def speed_metrics(self, examples_per_sec: float) -> dict[str, float]:
        return {"tokens_per_sec": examples_per_sec * self.tokens_per_example}

    @torch.no_grad()
    def generate(self, model: torch.nn.Module) -> str:
        """The prefix and `sample_length` tokens continued greedily (d2l's predict_ch8)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        ids = list(self.sample_prefix)
        outputs, state = model(torch.tensor([ids], device=device), state=None, return_state=True)
        for _ in range(self.sample_length):
            ids.append(int(outputs[0, -1].argmax()))
            outputs, state = model(torch.tensor([ids[-1:]], device=device), state=state, return_state=True)
        model.train(was_training)
        return self.separator.join(self.tokens[i] for i in ids)



def _detached(state: Any) -> Any:
    """The state with every tensor cut from the graph (an LSTM's is a tuple (h, c))."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detached(part) for part in state)
    return state
