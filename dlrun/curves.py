"""Learning curves as PNG files, read from metrics.jsonl: a run's curves.png, and a sweep's validation curves.

`curves.png` is written at the end of every run: loss and the task's metric per epoch, train and
validation, in the style of d2l's plots. `dlrun-report <sweep dir> --plot` writes
`val_curves.png` into the sweep directory: every job's validation loss and metric per epoch,
one line per job, and one mean line with a ± standard deviation band for jobs that differ only
in `seed` (dlrun.sweep's seed groups).
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from dlrun.plots import Curve, Panel, line_chart, save_png

if TYPE_CHECKING:
    from dlrun.sweep import JobResult, SweepSummary

log = logging.getLogger("dlrun")
CURVES_FILE = "curves.png"
SWEEP_CURVES_FILE = "val_curves.png"
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


def write_sweep_curves(summary: SweepSummary) -> Path:
    """val_curves.png in the sweep directory (see `sweep_panels`)."""
    return save_png(line_chart(sweep_panels(summary), panel_width=6.5, height=4.5),
                    summary.sweep_dir / SWEEP_CURVES_FILE)


def sweep_panels(summary: SweepSummary) -> list[Panel]:
    """Each job's validation loss and metric per epoch, labelled by the overrides that differ; a seed
    group's jobs as one curve, their mean ± sample std at the epochs every one of them reached."""
    jobs = {job.job: job for job in summary.jobs}
    shared = set.intersection(*(set(job.overrides) for job in summary.jobs)) if len(jobs) > 1 else set()
    monitor = next((job.monitor for job in summary.jobs if job.monitor), None)
    split, _, metric = (monitor or "val/").partition("/")
    metric = metric or _first_metric(summary)
    grouped = {number for group in summary.seed_groups for number in group.jobs}
    lines: list[tuple[str, list[dict[str, Series]]]] = []  # (label, the series of its jobs)
    for group in summary.seed_groups:
        label = " ".join(o for o in group.overrides if o not in shared) or "(all jobs)"
        members = [_job_series(summary, jobs[n]) for n in group.jobs]
        lines.append((f"{label} (mean ± std, {len(group.jobs)} seeds)", members))
    for job in sorted(summary.jobs, key=lambda j: j.job):
        if job.job not in grouped:
            label = " ".join(o for o in job.overrides if o not in shared) or job.name
            suffix = "" if job.status == "completed" else f" ({job.status})"
            lines.append((f"{job.job}: {label}{suffix}", [_job_series(summary, job)]))
    panels = []
    for name in ("loss", metric):
        key = f"{split}/{name}"
        curves = [_mean_curve(label, [series.get(key, {}) for series in members]) for label, members in lines]
        panels.append(Panel(key, [curve for curve in curves if curve is not None]))
    return panels


def _job_series(summary: SweepSummary, job: JobResult) -> dict[str, Series]:
    return epoch_series(summary.sweep_dir / job.name)


def _first_metric(summary: SweepSummary) -> str:
    """The validation metric besides the loss, when no job completed to name its monitor."""
    for job in summary.jobs:
        names = [name.partition("/")[2] for name in _job_series(summary, job) if name.startswith("val/")]
        names = [name for name in names if name != "loss"]
        if names:
            return names[0]
    return "loss"


def _mean_curve(label: str, members: list[Series]) -> Optional[Curve]:
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
