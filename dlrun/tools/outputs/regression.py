"""Regression: a predicted-versus-true scatter and residual statistics; predictions in the target's units."""

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
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.residuals: dict[str, float] = {}

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.predicted.append(outputs.detach().float().reshape(-1))
        self.true.append(targets.detach().float().reshape(-1))

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        if not self.predicted:
            return {}
        predicted, true = torch.cat(self.predicted).cpu().numpy(), torch.cat(self.true).cpu().numpy()
        self.residuals = residual_statistics(predicted, true)
        chart = plots.scatter_chart(true, predicted, f"predicted vs true (RMSE {self.residuals['rmse']:.4g})")
        plots.save_png(chart, folder / "predicted_vs_true.png")
        writer.add_image("eval/predicted_vs_true", plots.pixels(chart), dataformats="HWC")
        return {"residuals": self.residuals}

    def tables(self) -> list[Table]:
        if not self.residuals:
            return []
        table = Table(title="residuals", caption="predicted - true")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for name, value in self.residuals.items():
            table.add_row(name, number(value))
        return [table]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        # dataset.log_target only changes how the run was scored: the model predicts the target's own units.
        values = model(inputs).float().reshape(len(inputs), -1)[:, 0].cpu().tolist()
        return [(identifier, {"prediction": value}) for identifier, value in zip(ids, values)]




def residual_statistics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Of the residuals predicted - true: count, mean (bias), std, MAE, RMSE, median and max |residual|, R²."""
    residuals = predicted - true
    spread = float(((true - true.mean()) ** 2).sum())
    return {"count": int(len(residuals)), "mean": float(residuals.mean()), "std": float(residuals.std()),
            "mae": float(np.abs(residuals).mean()), "rmse": float(math.sqrt((residuals ** 2).mean())),
            "median_abs": float(np.median(np.abs(residuals))), "max_abs": float(np.abs(residuals).max()),
            "r2": 1 - float((residuals ** 2).sum()) / spread if spread > 0 else float("nan")}
