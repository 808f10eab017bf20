"""PNG line charts drawn with matplotlib's Agg renderer: no display, no pyplot state, atomic writes.

Kept small and generic so every figure dlrun writes (forecasts, training curves, evaluations)
goes through one helper. matplotlib is imported when a chart is drawn, not when dlrun starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from dlrun.atomic import atomic_write


@dataclass(frozen=True)
class Line:
    """One curve: `y` against `x`, named `label` in the legend."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    width: float = 1.0


def save_line_chart(path: Path, lines: Sequence[Line], *, xlabel: str, ylabel: str, title: str = "",
                    markers: Optional[dict[str, float]] = None, size: tuple[float, float] = (9.0, 4.0)) -> Path:
    """Draw `lines` on one set of axes and write the PNG to `path` (atomically); return `path`.

    `markers` draws a dashed vertical line at each x, labelled (e.g. where the test part starts).
    """
    from matplotlib.figure import Figure  # Figure alone renders with Agg: no GUI backend is touched

    figure = Figure(figsize=size, layout="constrained")
    axes = figure.add_subplot()
    for line in lines:
        axes.plot(list(line.x), list(line.y), label=line.label, linewidth=line.width)
    for label, x in (markers or {}).items():
        axes.axvline(x, color="grey", linestyle="--", linewidth=0.8, label=label)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    atomic_write(Path(path), lambda partial: figure.savefig(partial, format="png", dpi=100))
    return Path(path)
