"""Regression: predicted-versus-true scatters and residual statistics per target; predictions in the target's
units (standardised outputs brought back with the training split's mean and std, dlrun.data.targets)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.data.card import DataCard
from dlrun.report import plots
from dlrun.tasks import Task
from dlrun.tools.outputs.base import OutputOptions, TaskOutputs, number


class RegressionOutputs(TaskOutputs):
    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.scale = card.scale()
        self.names = card.prediction_names() if self.scale.count > 1 else card.target_names[:1] or ["target"]
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.residuals: dict[str, dict[str, float]] = {}

    def in_units(self, outputs: torch.Tensor) -> torch.Tensor:
        """(batch, targets) in the targets' units."""
        return self.scale.to_units(outputs.detach().float().reshape(len(outputs), self.scale.count))

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.predicted.append(self.in_units(outputs))
        self.true.append(targets.detach().float().reshape(len(targets), self.scale.count))

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        if not self.predicted:
            return {}
        predicted, true = torch.cat(self.predicted).cpu().numpy(), torch.cat(self.true).cpu().numpy()
        self.residuals = {name: residual_statistics(predicted[:, i], true[:, i]) for i, name in enumerate(self.names)}
        titles = [f"{name}: predicted vs true (RMSE {self.residuals[name]['rmse']:.4g})" for name in self.names]
        chart = plots.scatter_chart(true, predicted, titles)
        plots.save_png(chart, folder / "predicted_vs_true.png")
        writer.add_image("eval/predicted_vs_true", plots.pixels(chart), dataformats="HWC")
        if len(self.names) == 1:
            return {"residuals": self.residuals[self.names[0]]}
        return {"residuals": self.residuals}

    def tables(self) -> list[Table]:
        if not self.residuals:
            return []
        table = Table(title="residuals", caption="predicted - true, in the target's units")
        table.add_column("statistic")
        for name in self.residuals:
            table.add_column(name if len(self.residuals) > 1 else "value", justify="right")
        for statistic in next(iter(self.residuals.values())):
            table.add_row(statistic, *(number(scores[statistic]) for scores in self.residuals.values()))
        return [table]

    def columns(self) -> list[str]:
        return ["prediction"] if self.scale.count == 1 else list(self.names)

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        # dataset.log_target only changes how the run was scored: the model predicts the target's own units.
        values = self.in_units(model(inputs)).cpu().tolist()
        return [(identifier, dict(zip(self.columns(), row))) for identifier, row in zip(ids, values)]


def residual_statistics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Of the residuals predicted - true: count, mean (bias), std, MAE, RMSE, median and max |residual|, R²."""
    residuals = predicted - true
    spread = float(((true - true.mean()) ** 2).sum())
    return {"count": int(len(residuals)), "mean": float(residuals.mean()), "std": float(residuals.std()),
            "mae": float(np.abs(residuals).mean()), "rmse": float(math.sqrt((residuals ** 2).mean())),
            "median_abs": float(np.median(np.abs(residuals))), "max_abs": float(np.abs(residuals).max()),
            "r2": 1 - float((residuals ** 2).sum()) / spread if spread > 0 else float("nan")}
