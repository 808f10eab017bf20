"""Regression of one or several numbers: MSE or Huber on standardised targets; RMSE, MAE, R² in the target's units.

The targets' mean and standard deviation on the training split (dlrun.data.targets.TargetScale)
put every target on one scale: with `dataset.standardize_targets` (the default) the model learns
(target - mean) / std, so a score from 1 to 5 and a price in the hundred thousands train alike;
every metric, prediction and export is in the target's own units. d2l's toys whose point is the
learnt weights (synthetic_linear, sine) train on the raw targets.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.data.targets import TargetScale, TargetUnits
from dlrun.errors import ConfigError
from dlrun.tasks.base import Task, as_float32, count_tensor, refuse_other_options
from dlrun.tasks.forecast import Series, evaluate_forecasts

if TYPE_CHECKING:
    from dlrun.data.build import Data

LOSSES = ("mse", "huber")


class Regression(Task):
    """MSE (or Huber, `dataset.loss=huber`, δ = 1 standard deviation) on the model's units; the best checkpoint
    has the lowest val/rmse.

    Metrics, in the target's units: `rmse` and `mae` (over every target value), `r2` (the
    coefficient of determination, averaged over targets as scikit-learn's `r2_score`); `loss` is
    the loss that is minimised, in the model's units. With `log_target` (dataset.log_target=true,
    for positive targets such as prices) it also reports d2l's log-RMSE,
    sqrt(mean((log max(prediction, 1) - log target)²)), and picks the best checkpoint by it.

    When the examples are windows of one series (the dataset's extras say so, e.g. `sine`),
    `after_test` also forecasts k steps ahead from the model's own predictions (d2l 8.1) and
    reports `forecast/mse_<k>` with a figure, `forecasts.png` (see dlrun.tasks.forecast).
    """

    mode = "min"
    head = "one output per target"

    def __init__(self, log_target: bool = False, series: Optional[Series] = None, scale: Optional[TargetScale] = None,
                 loss: str = "mse", names: Sequence[str] = ()) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"dataset.loss={loss!r} is not one of: {', '.join(LOSSES)} (dataset.task=regression)")
        self.log_target = log_target
        self.metric = "log_rmse" if log_target else "rmse"
        self.series = series
        self.scale = scale or TargetScale.identity()
        self.loss_name = loss
        count = self.scale.count
        self.names = [str(name) for name in names] or (["target"] if count == 1 else
                                                          [f"target_{i}" for i in range(count)])
        self.expected_outputs = self.scale.count

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Regression":
        dataset = cfg.dataset
        refuse_other_options(dataset, "regression")
        loss = dataset.get("loss") or "mse"
        return cls(log_target=bool(dataset.get("log_target", False)), series=Series.from_extras(data.extras),
                   scale=TargetScale.from_state(data.extras.get("target_scale")), loss=loss,
                   names=data.extras.get("target_names") or ())

    def columns(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.reshape(len(tensor), self.scale.count)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # float32 whatever autocast gives: standardising a price in bf16 would keep 3 digits of it
        goal = self.scale.to_model(self.columns(targets).float()).reshape(outputs.shape)
        if self.loss_name == "huber":
            return F.huber_loss(outputs.float(), goal, delta=1.0)
        return F.mse_loss(outputs.float(), goal)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, examples, squared log errors (0 without log_target), then per target the sums of
        squared errors, of the targets' squares, of absolute errors and of the targets, in standard deviations
        (from the training split's mean: sums of squares stay well within float32)].

        A dozen small tensor operations: the per-step cost of reporting MAE and R² besides the RMSE.
        """
        mean, std = self.scale.tensors(outputs.device)
        truth = self.columns(targets).float()
        centred = (truth - mean) / std
        predicted = self.columns(outputs).float()
        errors = (predicted - centred) if self.scale.standardized else (predicted - truth) / std
        log_errors = count_tensor(0, outputs.device)
        if self.log_target:
            in_units = self.scale.to_units(predicted)
            log_errors = (in_units.clamp(min=1).log() - truth.log()).square().sum()
        both = torch.cat([errors, centred], dim=1)
        head = torch.stack([as_float32(loss) * len(truth), count_tensor(len(truth), outputs.device), log_errors])
        return torch.cat([head, (both * both).sum(dim=0), torch.cat([errors.abs(), centred], dim=1).sum(dim=0)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        per_target = self.per_target(stats)
        count = stats[1]
        values = count * self.scale.count
        squared = sum(scores["mse"] * count for scores in per_target.values())
        absolute = sum(scores["mae"] * count for scores in per_target.values())
        result = {"loss": stats[0] / count, "rmse": math.sqrt(squared / values) if squared >= 0 else math.nan,
                  "mae": absolute / values, "r2": sum(s["r2"] for s in per_target.values()) / len(per_target)}
        if self.log_target:
            result["log_rmse"] = math.sqrt(stats[2] / values) if stats[2] >= 0 else math.nan
        return result

    def per_target(self, stats: list[float]) -> dict[str, dict[str, float]]:
        """{target name: {mse, rmse, mae, r2}} in the target's units, from a pass's summed batch stats."""
        count, targets = stats[1], self.scale.count
        squared, total_squares, absolute, total = (stats[3 + i * targets: 3 + (i + 1) * targets] for i in range(4))
        result = {}
        for i, name in enumerate(self.names):
            std = self.scale.std[i]
            spread = total_squares[i] - total[i] ** 2 / count  # sum of (y - mean)², in standard deviations
            mse = squared[i] / count * std ** 2
            result[name] = {"mse": mse, "rmse": math.sqrt(mse) if mse >= 0 else math.nan,
                            "mae": absolute[i] / count * std,
                            "r2": 1 - squared[i] / spread if spread > 1e-12 else math.nan}
        return result

    def after_test(self, model: torch.nn.Module, run_dir: Path) -> dict[str, float]:
        if self.series is None:
            return {}
        in_units = TargetUnits(model, self.scale) if self.scale.standardized else model
        return evaluate_forecasts(in_units, self.series, run_dir)
