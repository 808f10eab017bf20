"""Multi-step-ahead forecasts of an autoregressive model over a series (d2l 8.1), their errors, their figure.

A model that predicts x_t from the `tau` values before it is run on its own predictions: the
k-step-ahead forecast of x_t starts from the observations x_{t-k-tau+1} .. x_{t-k} and feeds
each prediction back in as the newest input, k times. Errors grow with k because each step
inherits the previous steps' errors; d2l's figure shows the 1-, 4-, 16- and 64-step forecasts
drifting from the truth. The errors (`forecast/mse_<k>`) are measured on the test part of the
series only: targets the model never trained on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dlrun.data.synthetic import DEFAULT_HORIZONS
from dlrun.report.plots import Curve, Panel, line_chart, save_png

log = logging.getLogger(__name__)
FIGURE_FILE = "forecasts.png"


@dataclass(frozen=True)
class Series:
    """A series whose windows are a dataset's examples: (x_i .. x_{i+tau-1}) → x_{i+tau}."""

    values: torch.Tensor  # x_1 .. x_T (index 0 is time 1)
    tau: int
    test_start: int  # index of the first target of the test part
    horizons: tuple[int, ...] = DEFAULT_HORIZONS

    def __post_init__(self) -> None:
        if not self.horizons or min(self.horizons) < 1:
            raise ValueError(f"forecast horizons must be >= 1, got {list(self.horizons)}")
        if len(self.values) - self.tau - max(self.horizons) + 1 < 1:
            raise ValueError(f"a series of {len(self.values)} values is too short for tau={self.tau} and "
                             f"{max(self.horizons)}-step forecasts")
        last_start = len(self.values) - max(self.horizons)  # every horizon needs a forecast in the test part
        if not self.tau <= self.test_start <= last_start:
            raise ValueError(f"test_start={self.test_start} must lie in [tau, {last_start}] for "
                             f"{max(self.horizons)}-step forecasts of {len(self.values)} values")

    @classmethod
    def from_extras(cls, extras: dict[str, Any]) -> Optional["Series"]:
        """The series a dataset describes in its extras (`series`, `tau`, `test_start`, `forecast_steps`), or None."""
        if "series" not in extras:
            return None
        return cls(torch.as_tensor(extras["series"], dtype=torch.float32), int(extras["tau"]),
                   int(extras["test_start"]), tuple(int(k) for k in extras.get("forecast_steps", DEFAULT_HORIZONS)))


def k_step_forecasts(predict: Callable[[torch.Tensor], torch.Tensor], values: torch.Tensor, tau: int,
                     max_steps: int) -> torch.Tensor:
    """(N, max_steps) forecasts, N = len(values) - tau - max_steps + 1, all start points at once.

    Row i starts from the observations values[i : i + tau]; column k-1 is the k-step-ahead
    forecast of values[i + tau + k - 1]. `predict` maps windows (N, tau) to predictions (N,).
    """
    count = len(values) - tau - max_steps + 1
    columns = [values[i: i + count] for i in range(tau)]
    for _ in range(max_steps):
        window = torch.stack(columns[-tau:], dim=1)
        columns.append(predict(window).reshape(count))
    return torch.stack(columns[tau:], dim=1)


@torch.no_grad()
def evaluate_forecasts(model: torch.nn.Module, series: Series, run_dir: Path) -> dict[str, float]:
    """`forecast/mse_<k>` for every horizon k, and FIGURE_FILE in `run_dir`: each forecast against the truth."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values = series.values.to(device)
    max_steps = max(series.horizons)
    forecasts = k_step_forecasts(lambda window: model(window).float(), values, series.tau, max_steps).cpu()
    values = values.cpu()
    model.train(was_training)

    count = len(forecasts)
    metrics: dict[str, float] = {}
    lines = [Curve("data", range(1, len(values) + 1), values.tolist(), width=0.6)]
    for k in sorted(series.horizons):
        first = series.tau + k - 1  # index of the target of row 0
        targets = values[first: first + count]
        predicted = forecasts[:, k - 1]
        in_test = torch.arange(first, first + count) >= series.test_start
        metrics[f"forecast/mse_{k}"] = float((predicted - targets)[in_test].square().mean())
        lines.append(Curve(f"{k}-step preds", range(first + 1, first + count + 1), predicted.tolist()))
    panel = Panel("k-step-ahead forecasts (d2l 8.1)", lines, xlabel="time", ylabel="x",
                  markers={"test part starts": series.test_start + 1})
    figure = save_png(line_chart([panel], panel_width=9.0, height=4.0), Path(run_dir) / FIGURE_FILE)
    errors = ", ".join(f"{name.rpartition('_')[2]}: {value:.4f}" for name, value in metrics.items())
    log.info("forecast MSE on the test part, by steps ahead: %s (figure: %s)", errors, figure)
    return metrics
