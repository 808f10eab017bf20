"""`dlrun-report <sweep dir> [--plot]`: the leaderboard of a finished or partial sweep, and its validation curves.

The table is the one a multirun prints at its end (dlrun.run.leaderboard), read from the job
directories. `--plot` writes `val_curves.png` into the sweep directory: every job's validation
loss and metric per epoch, one line per job, and one mean line with a ± standard deviation band
for jobs that differ only in `seed` (the leaderboard's seed groups).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional

from dlrun.report.curves import Series, epoch_series, mean_curve
from dlrun.report.plots import Panel, line_chart, save_png
from dlrun.run.leaderboard import JobResult, SweepSummary, read_sweep, show

SWEEP_CURVES_FILE = "val_curves.png"


def main(argv: Optional[list[str]] = None) -> None:
    """`dlrun-report <sweep dir> [--plot]`: the leaderboard of a finished or partial sweep."""
    parser = argparse.ArgumentParser(prog="dlrun-report", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument("--plot", action="store_true",
                        help="also write val_curves.png there: every job's validation curves, mean ± std over seeds")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.exit(2, f"dlrun-report: error: no such directory: {args.sweep_dir}\n")
    summary = read_sweep(args.sweep_dir)
    if not summary.jobs:
        parser.exit(2, f"dlrun-report: error: no job directories (with .hydra/ or status.json) in {args.sweep_dir}\n")
    show(summary)
    if args.plot:
        print(f"validation curves: {write_sweep_curves(summary)}")


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
        curves = [mean_curve(label, [series.get(key, {}) for series in members]) for label, members in lines]
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
