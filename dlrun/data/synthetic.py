"""d2l's generated datasets: linear regression with known weights, and a noisy sine sequence."""

from __future__ import annotations

from typing import Sequence

import torch

from dlrun.data.splits import DataSplits, TensorSplit

# The k-step-ahead forecasts a sine run reports by default (d2l 8.1's figure: dlrun.tasks.forecast).
DEFAULT_HORIZONS = (1, 4, 16, 64)


def synthetic_linear(
    dimension: int = 2,
    weights: float | list[float] = (2.0, -3.4),
    bias: float = 4.2,
    noise: float = 0.01,
    num_train: int = 1000,
    num_test: int = 100,
    seed: int = 0,
) -> DataSplits:
    """y = Xw + b + N(0, noise²) with X ~ N(0, 1) (d2l 3.3); `weights` is a list or one value for every input.

    The true parameters are returned in `extras` (`weights`, `bias`) so a run can be compared to them.
    d2l 3.7's weight-decay demo: dimension=200, weights=0.01, bias=0.05, num_train=20, num_test=100.
    """
    true_w = torch.full((dimension,), float(weights)) if isinstance(weights, (int, float)) else torch.tensor(
        [float(w) for w in weights])
    if true_w.shape != (dimension,):
        raise ValueError(f"{len(true_w)} weights for dimension {dimension}: give {dimension} or a single value")
    if num_train < 1 or num_test < 1 or noise < 0:
        raise ValueError("num_train and num_test must be >= 1 and noise >= 0")
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(num_train + num_test, dimension, generator=generator)
    targets = features @ true_w + bias + noise * torch.randn(num_train + num_test, generator=generator)
    return DataSplits(train=TensorSplit(features[:num_train], targets[:num_train]),
                      test=TensorSplit(features[num_train:], targets[num_train:]),
                      extras={"weights": true_w.tolist(), "bias": float(bias)})


def sine(length: int = 1000, tau: int = 4, noise: float = 0.2, num_train: int = 600, seed: int = 0,
         forecast_steps: Sequence[int] = DEFAULT_HORIZONS) -> DataSplits:
    """x_t = sin(0.01 t) + N(0, noise²) for t = 1..length (d2l 8.1), embedded as (x_{t-tau} .. x_{t-1}) → x_t.

    The first `num_train` windows train (val is drawn from them), the later ones test: the
    test asks for the continuation of the series, as in d2l. `extras` holds the whole series,
    so the run also reports `forecast_steps`-step-ahead forecast errors and draws them
    (dlrun.tasks.forecast).
    """
    if not 1 <= tau < length or not 1 <= num_train < length - tau:
        raise ValueError(f"need 1 <= tau < length and 1 <= num_train < length - tau (got tau={tau}, "
                         f"num_train={num_train}, length={length})")
    if not forecast_steps or min(forecast_steps) < 1 or num_train + tau + max(forecast_steps) > length:
        raise ValueError(f"forecast_steps={list(forecast_steps)} must be >= 1, and num_train + tau + the longest "
                         f"({num_train} + {tau} + {max(forecast_steps, default=0)}) at most length={length}")
    generator = torch.Generator().manual_seed(seed)
    time = torch.arange(1, length + 1, dtype=torch.float32)
    series = torch.sin(0.01 * time) + noise * torch.randn(length, generator=generator)
    windows = series.unfold(0, tau, 1)[:-1]  # row i: x_i .. x_{i+tau-1}
    labels = series[tau:]
    return DataSplits(train=TensorSplit(windows[:num_train].clone(), labels[:num_train].clone()),
                      test=TensorSplit(windows[num_train:].clone(), labels[num_train:].clone()),
                      extras={"series": series, "tau": tau, "test_start": num_train + tau,
                              "forecast_steps": list(forecast_steps)})
