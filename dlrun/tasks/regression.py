"""Regression: mean squared error, RMSE (and d2l's log-RMSE), multi-step forecasts of a series."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.tasks.base import Task, as_float32, count_tensor
from dlrun.tasks.forecast import Series, evaluate_forecasts

if TYPE_CHECKING:
    from dlrun.data.build import Data


class Regression(Task):
    """Mean squared error; RMSE. The best checkpoint has the lowest val/rmse.

    With `log_target` (dataset.log_target=true, for positive targets such as prices) it also
    reports d2l's log-RMSE, sqrt(mean((log max(prediction, 1) - log target)²)), and picks the
    best checkpoint by it: errors count relative to the target's size.

    When the examples are windows of one series (the dataset's extras say so, e.g. `sine`),
    `after_test` also forecasts k steps ahead from the model's own predictions (d2l 8.1) and
    reports `forecast/mse_<k>` with a figure, `forecasts.png` (see dlrun.tasks.forecast).
    """

    mode = "min"

    def __init__(self, log_target: bool = False, series: Optional[Series] = None) -> None:
        self.log_target = log_target
        self.metric = "log_rmse" if log_target else "rmse"
        self.series = series

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Regression":
        return cls(log_target=bool(cfg.dataset.get("log_target", False)), series=Series.from_extras(data.extras))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets.reshape(outputs.shape))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, squared log errors (0 without log_target), examples]."""
        log_errors = count_tensor(0, outputs.device)
        if self.log_target:
            predictions = outputs.float().reshape(targets.shape).clamp(min=1)
            log_errors = (predictions.log() - targets.float().log()).square().sum()
        return torch.stack([as_float32(loss) * len(targets), log_errors.float(), count_tensor(len(targets), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, log_errors, count = stats
        mse = loss_sum / count
        result = {"loss": mse, "rmse": math.sqrt(mse) if mse >= 0 else float("nan")}
        if self.log_target:
            result["log_rmse"] = math.sqrt(log_errors / count) if log_errors >= 0 else float("nan")
        return result


    def after_test(self, model: torch.nn.Module, run_dir: Path) -> dict[str, float]:
        if self.series is None:
            return {}
        return evaluate_forecasts(model, self.series, run_dir)
