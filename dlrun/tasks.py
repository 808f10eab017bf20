"""Loss and metrics for each kind of task a dataset declares (`dataset.task`).

Per batch a task returns a small tensor of sums that stays on the device; the loop adds
them up and reads them once per epoch, so no step waits for the host. Tasks that need more
than a forward pass per batch (a language model's hidden state, its text samples) do it
through the hooks `start_pass`, `carried_state` and `epoch_texts`, so the loop stays the same for
every task. `report` names what dlrun-eval writes for the task and what a dlrun-predict row holds.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

if TYPE_CHECKING:
    from dlrun.data import Data
    from dlrun.data.card import DataCard
    from dlrun.reports import Report, ReportOptions


class Task:
    """How a batch goes through the model; subclasses say how it is scored."""

    metric: str  # the validation metric that picks the best checkpoint
    mode: str  # "max" or "min": which direction of `metric` is better
    default_grad_clip: Optional[float] = None  # used when regularization.grad_clip is null

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Task":
        """Build from the whole run config (cfg.dataset, cfg.regularization, ...) and the loaded data."""
        return cls()

    def start_pass(self, training: bool) -> None:
        """Called before every training epoch and every evaluation."""

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)

    def epoch_texts(self, model: torch.nn.Module) -> dict[str, str]:
        """Text to log at the end of a training epoch (TensorBoard's TEXT tab), by tag."""
        return {}

    def carried_state(self) -> Any:
        """What the task carries from one batch to the next (tensors), saved with a mid-epoch position."""
        return None

    def restore_carried_state(self, state: Any) -> None:
        """Continue a pass where `carried_state` was taken (called after `start_pass`)."""

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        """What dlrun-eval writes besides the metrics, and what a dlrun-predict row holds (dlrun.reports)."""
        from dlrun.reports import Report

        return Report(card, options)


class Classification(Task):
    """Cross-entropy on logits; accuracy. The best checkpoint has the highest val/acc."""

    metric, mode = "acc", "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        # regularization.label_smoothing; reported losses (val and test too) include it.
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Classification":
        return cls(label_smoothing=cfg.regularization.label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, correct predictions, examples]."""
        count = outputs.new_full((), len(targets), dtype=torch.float32)  # a fill, not a host-to-device copy
        correct = (outputs.argmax(dim=-1) == targets).sum().float()
        return torch.stack([loss.float() * count, correct, count])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, correct, count = stats
        return {"loss": loss_sum / count, "acc": correct / count}

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import ClassificationReport

        return ClassificationReport(card, options)


class Regression(Task):
    """Mean squared error; RMSE. The best checkpoint has the lowest val/rmse.

    With `log_target` (dataset.log_target=true, for positive targets such as prices) it also
    reports d2l's log-RMSE, sqrt(mean((log max(prediction, 1) - log target)²)), and picks the
    best checkpoint by it: errors count relative to the target's size.
    """

    mode = "min"

    def __init__(self, log_target: bool = False) -> None:
        self.log_target = log_target
        self.metric = "log_rmse" if log_target else "rmse"

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Regression":
        return cls(log_target=bool(cfg.dataset.get("log_target", False)))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets.reshape(outputs.shape))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, squared log errors (0 without log_target), examples]."""
        count = outputs.new_full((), len(targets), dtype=torch.float32)  # a fill, not a host-to-device copy
        log_errors = outputs.new_zeros(())
        if self.log_target:
            predictions = outputs.float().reshape(targets.shape).clamp(min=1)
            log_errors = (predictions.log() - targets.float().log()).square().sum()
        return torch.stack([loss.float() * count, log_errors.float(), count])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, log_errors, count = stats
        mse = loss_sum / count
        result = {"loss": mse, "rmse": math.sqrt(mse) if mse >= 0 else float("nan")}
        if self.log_target:
            result["log_rmse"] = math.sqrt(log_errors / count) if log_errors >= 0 else float("nan")
        return result

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import RegressionReport

        return RegressionReport(card, options)


class LanguageModel(Task):
    """Next-token cross-entropy over every position; perplexity (exp of the mean loss), lower is better.

    The model is called as `model(ids, state=..., return_state=True)` → (logits (B, T, V), state).
    With sequential sampling the state is carried from batch to batch, detached so gradients
    stop at the batch boundary (truncated backpropagation through time); with random sampling
    every batch starts from a fresh state. Every pass starts fresh. Gradients are clipped to
    norm 1 unless regularization.grad_clip says otherwise (d2l 8.5).
    """

    metric, mode = "ppl", "min"
    default_grad_clip = 1.0

    def __init__(self, tokens: list[str], separator: str, sample_prefix: list[int], carry_state: bool,
                 sample_length: int = 50) -> None:
        self.tokens = tokens
        self.separator = separator
        self.sample_prefix = sample_prefix or [1 if len(tokens) > 1 else 0]  # else: the most frequent token
        self.carry_state = carry_state
        self.sample_length = sample_length
        self.state: Any = None

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "LanguageModel":
        extras = data.extras
        return cls(extras["tokens"], extras["separator"], extras["sample_prefix"], carry_state=data.sequential)

    def start_pass(self, training: bool) -> None:
        self.state = None

    def carried_state(self) -> Any:
        return self.state

    def restore_carried_state(self, state: Any) -> None:
        self.state = state

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        outputs, state = model(inputs, state=self.state, return_state=True)
        self.state = _detached(state) if self.carry_state else None
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x tokens, tokens]."""
        count = outputs.new_full((), targets.numel(), dtype=torch.float32)  # a fill, not a host-to-device copy
        return torch.stack([loss.float() * count, count])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, count = stats
        loss = loss_sum / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}  # exp overflows a float past ~709

    def epoch_texts(self, model: torch.nn.Module) -> dict[str, str]:
        return {"sample": self.generate(model)}

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import LanguageModelReport

        return LanguageModelReport(card, options)

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


TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression,
                                "language_model": LanguageModel}


def build_task(cfg: DictConfig, data: "Data") -> Task:
    """The task `dataset.task` names, configured from the run's config and data (log_target, a vocabulary)."""
    return TASKS[data.task].from_config(cfg, data)
