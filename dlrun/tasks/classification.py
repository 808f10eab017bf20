"""Classification: cross-entropy on logits (with label smoothing), accuracy."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.tasks.base import Task, as_float32, count_tensor, refuse_other_options

if TYPE_CHECKING:
    from dlrun.data.build import Data


class Classification(Task):
    """Cross-entropy on logits; accuracy. The best checkpoint has the highest val/acc."""

    metric, mode = "acc", "max"
    head = "one output per class"

    def __init__(self, label_smoothing: float = 0.0, num_classes: Optional[int] = None) -> None:
        # regularization.label_smoothing; reported losses (val and test too) include it.
        self.label_smoothing = label_smoothing
        self.expected_outputs = num_classes

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Classification":
        refuse_other_options(cfg.dataset, "classification")
        classes = data.extras.get("classes")
        return cls(label_smoothing=cfg.regularization.label_smoothing,
                   num_classes=len(classes) if classes else int(cfg.dataset.num_outputs))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, correct predictions, examples]."""
        correct = (outputs.argmax(dim=-1) == targets).sum(dtype=torch.float32)
        return torch.stack([as_float32(loss) * len(targets), correct, count_tensor(len(targets), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, correct, count = stats
        return {"loss": loss_sum / count, "acc": correct / count}
