"""Loss and metrics for each kind of task a dataset declares (`dataset.task`).

Per batch a task returns a small tensor of sums that stays on the device; the loop adds
them up and reads them once per epoch, so no step waits for the host.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Task:
    """How a batch goes through the model; subclasses say how it is scored."""

    metric: str  # the validation metric that picks the best checkpoint
    mode: str  # "max" or "min": which direction of `metric` is better
    default_grad_clip: float | None = None  # used when regularization.grad_clip is null

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return model(inputs)


class Classification(Task):
    """Cross-entropy on logits; accuracy. The best checkpoint has the highest val/acc."""

    metric, mode = "acc", "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        # regularization.label_smoothing; reported losses (val and test too) include it.
        self.label_smoothing = label_smoothing

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, correct predictions, examples]."""
        count = targets.new_tensor(len(targets), dtype=torch.float32)
        correct = (outputs.argmax(dim=-1) == targets).sum().float()
        return torch.stack([loss.float() * count, correct, count])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, correct, count = stats
        return {"loss": loss_sum / count, "acc": correct / count}


class Regression(Task):
    """Mean squared error; RMSE. The best checkpoint has the lowest val/rmse."""

    metric, mode = "rmse", "min"

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets.reshape(outputs.shape))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, loss x examples, examples]: the metric is derived from the mean loss."""
        count = targets.new_tensor(len(targets), dtype=torch.float32)
        total = loss.float() * count
        return torch.stack([total, total, count])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, _, count = stats
        mse = loss_sum / count
        return {"loss": mse, "rmse": math.sqrt(mse) if mse >= 0 else float("nan")}


TASKS = {"classification": Classification, "regression": Regression}


def build_task(kind: str, label_smoothing: float = 0.0) -> Task:
    """The task for `dataset.task`; `label_smoothing` (checked by the schema) applies to classification."""
    return TASKS[kind](label_smoothing) if label_smoothing else TASKS[kind]()
