"""Learning curves read from metrics.jsonl: a run's curves.png, and the mean ± std curve of several runs.

`curves.png` is written at the end of every run: loss and the task's metric per epoch, train and
validation, in the style of d2l's plots. A sweep's validation curves (`dlrun-report --plot`) are
drawn from the same series by dlrun.tools.sweep_report.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Optional

from dlrun.report.plots import Curve, Panel, line_chart, save_png

log = logging.getLogger("dlrun")
CURVES_FILE = "curves.png"
Series = dict[int, float]  # epoch → value


def epoch_series(run_dir: Path) -> dict[str, Series]:
    """Every per-epoch scalar of the run's metrics.jsonl, by name (the final line of test results left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    series: dict[str, Series] = {}
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by a kill: the rest is still worth drawing
            continue
        if "train/loss" not in record:  # the test line and the run's results
            continue
        for name, value in record.items():
            if name != "epoch" and isinstance(value, (int, float)):
                series.setdefault(name, {})[int(record["epoch"])] = float(value)
    return series


def write_run_curves(run_dir: Path, metric: str) -> Optional[Path]:
    """curves.png: loss and `metric` (e.g. acc) per epoch, train and val. A failure to draw is logged,
    never raised: the run it ends has completed."""
    try:
        series = epoch_series(run_dir)
        panels = []
        for name in ("loss", metric):
            curves = [Curve(f"{split}/{name}", list(values), list(values.values()), dashed=split == "val")
                      for split in ("train", "val") if (values := series.get(f"{split}/{name}"))]
            panels.append(Panel(name, curves))
        return save_png(line_chart(panels), Path(run_dir) / CURVES_FILE)
    except Exception as error:  # matplotlib or the file system: say so, keep the run's outcome
        log.warning("could not write %s: %s: %s", Path(run_dir) / CURVES_FILE, type(error).__name__, error)
        return None


def mean_curve(label: str, members: list[Series]) -> Optional[Curve]:
    """One job's curve, or the mean ± sample std of several at the epochs they all have; None when empty."""
    members = [series for series in members if series]
    if not members:
        return None
    if len(members) == 1:
        return Curve(label, list(members[0]), list(members[0].values()))
    epochs = sorted(set.intersection(*(set(series) for series in members)))
    means = [statistics.fmean(series[e] for series in members) for e in epochs]
    spreads = [statistics.stdev(series[e] for series in members) for e in epochs]
    return Curve(label, epochs, means, spread=spreads)
