"""The pictures dlrun draws without a server: line charts (training curves, a sweep's validation
curves, forecasts), a confusion matrix, a scatter, an image grid. Every figure goes through here.

matplotlib's object API with the Agg renderer (`matplotlib.figure.Figure` alone: no pyplot state,
no display needed), imported when a picture is drawn so that starting dlrun stays quick. PNG
files are written atomically; `pixels()` gives the same picture as an array for TensorBoard.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from dlrun.atomic import atomic_write

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Curve:
    """One line of a chart: `y` against `x`; with `spread`, a band y ± spread around it (mean ± std)."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    spread: Optional[Sequence[float]] = None
    dashed: bool = False
    width: float = 1.5


@dataclass(frozen=True)
class Panel:
    """One set of axes of a line chart."""

    title: str
    curves: Sequence[Curve]
    xlabel: str = "epoch"
    ylabel: str = ""
    markers: Optional[dict[str, float]] = None  # a dashed vertical line at each x, labelled in the legend


def new_figure(width: float, height: float, columns: int = 1) -> tuple["Figure", list["Axes"]]:
    from matplotlib.figure import Figure  # a Figure renders with Agg by itself

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, list(np.atleast_1d(figure.subplots(1, columns)))


def save_png(figure: "Figure", path: Path, dpi: int = 100) -> Path:
    atomic_write(Path(path), lambda partial: figure.savefig(partial, format="png", dpi=dpi))
    return Path(path)


def pixels(figure: "Figure") -> np.ndarray:
    """The drawn figure as uint8 (H, W, 3), e.g. for `SummaryWriter.add_image(..., dataformats="HWC")`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def line_chart(panels: Sequence[Panel], panel_width: float = 5.0, height: float = 3.6) -> "Figure":
    """Panels side by side, each with a grid and a legend (d2l's plots: metric against epoch)."""
    from matplotlib.ticker import MaxNLocator

    figure, axes = new_figure(panel_width * len(panels), height, len(panels))
    for ax, panel in zip(axes, panels):
        for curve in panel.curves:
            (line,) = ax.plot(list(curve.x), list(curve.y), label=curve.label, linestyle="--" if curve.dashed else "-",
                              linewidth=curve.width, marker="o" if len(curve.x) == 1 else None)
            if curve.spread is not None:
                low = np.asarray(curve.y) - np.asarray(curve.spread)
                high = np.asarray(curve.y) + np.asarray(curve.spread)
                ax.fill_between(list(curve.x), low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        for label, x in (panel.markers or {}).items():
            ax.axvline(x, color="grey", linestyle="--", linewidth=0.8, label=label)
        ax.set(title=panel.title, xlabel=panel.xlabel, ylabel=panel.ylabel)
        if panel.xlabel == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if panel.curves or panel.markers:
            ax.legend(fontsize="small" if len(panel.curves) <= 6 else "x-small", loc="best")
    return figure


def confusion_matrix_chart(counts: np.ndarray, classes: Sequence[str]) -> "Figure":
    """Rows: true class, columns: predicted class; cells coloured by the row's fraction, labelled with counts."""
    size = len(classes)
    side = min(3.0 + 0.45 * size, 16.0)
    figure, (ax,) = new_figure(side + 1.0, side)
    totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=float), where=totals > 0)
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    ax.set(xticks=range(size), yticks=range(size), xlabel="predicted", ylabel="true", title="confusion matrix")
    ax.set_xticklabels(classes, rotation=90 if size > 6 else 0, fontsize="small")
    ax.set_yticklabels(classes, fontsize="small")
    if size <= 30:  # beyond that the numbers would not fit in their cells
        for row in range(size):
            for column in range(size):
                ax.text(column, row, str(int(counts[row, column])), ha="center", va="center", fontsize="x-small",
                        color="white" if fractions[row, column] > 0.5 else "black")
    return figure


def scatter_chart(true: np.ndarray, predicted: np.ndarray, titles: Sequence[str]) -> "Figure":
    """Predicted against true values, with the line y = x where a perfect model's points would lie; for
    (N, targets) arrays one panel per target, each with its title."""
    true, predicted = true.reshape(len(true), -1), predicted.reshape(len(predicted), -1)
    figure, axes = new_figure(5.0 * true.shape[1], 5.0, true.shape[1])
    for ax, column, panel_title in zip(axes, range(true.shape[1]), titles):
        truth, guess = true[:, column], predicted[:, column]
        ax.scatter(truth, guess, s=8, alpha=0.6)
        low, high = float(min(truth.min(), guess.min())), float(max(truth.max(), guess.max()))
        ax.plot([low, high], [low, high], color="grey", linestyle="--", linewidth=1, label="predicted = true")
        ax.set(xlabel="true", ylabel="predicted", title=panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    return figure


def image_grid(images: np.ndarray, titles: Sequence[str], columns: int = 8) -> "Figure":
    """Images (N, C, H, W) with values in [0, 1], one title each (d2l's show_images)."""
    count = len(images)
    rows = max(1, -(-count // columns))
    columns = min(columns, max(count, 1))
    figure, _ = new_figure(1.6 * columns, 1.8 * rows)
    figure.clear()
    for index, (image, title) in enumerate(zip(images, titles)):
        ax = figure.add_subplot(rows, columns, index + 1)
        picture = np.clip(np.transpose(image, (1, 2, 0)), 0, 1)
        if picture.shape[2] == 1:
            ax.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(picture[..., :3])
        ax.set_title(title, fontsize="x-small")
        ax.axis("off")
    return figure
