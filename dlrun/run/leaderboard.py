"""The sweep leaderboard: one row per job of a multirun, read from the job directories.

At the end of a multirun the `Leaderboard` callback (`hydra.callbacks` in conf/config.yaml)
writes summary.csv and summary.json into the sweep directory and prints the table;
`dlrun-report <sweep dir>` (dlrun.tools.sweep_report) prints the same table for any sweep,
finished or partial. Both read only what each job wrote (status.json, summary.json,
.hydra/hydra.yaml), so they work whichever launcher ran the jobs, in this process or in others,
and the exit code of a multirun comes from the same files.
"""

from __future__ import annotations

import csv
import math
import os
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from dlrun.atomic import read_json, write_json
from dlrun.machine import PARALLEL_JOBS_ENV
from dlrun.report.console import make_console
from dlrun.run.run_dir import STATUS_FILE, SUMMARY_FILE
from dlrun.run.status import effective_status, read_status

SUMMARY_CSV = "summary.csv"
CSV_COLUMNS = ("job", "name", "overrides", "status", "monitor", "best_value", "test_metric", "test_value",
               "epochs", "duration_s", "error")


@dataclass
class JobResult:
    """One job of a sweep as its directory describes it."""

    job: int
    name: str  # the job directory: `<job number>_<overrides>`, also its run name in TensorBoard
    overrides: list[str]  # the compared overrides (output paths and resume keys left out)
    status: str  # completed | failed | diverged | interrupted | running | stale (process gone) | missing
    monitor: Optional[str] = None  # e.g. val/acc
    mode: Optional[str] = None  # max | min
    best_value: Optional[float] = None
    test_metric: Optional[str] = None  # e.g. test/acc
    test_value: Optional[float] = None
    epochs: Optional[int] = None
    duration_s: Optional[float] = None
    error: Optional[str] = None
    exit_code: int = 0


@dataclass
class SeedGroup:
    """Jobs whose overrides differ only in `seed`: mean and sample standard deviation of the completed ones."""

    overrides: list[str]
    jobs: list[int]
    completed: int
    best_mean: Optional[float] = None
    best_std: Optional[float] = None
    test_mean: Optional[float] = None
    test_std: Optional[float] = None


@dataclass
class SweepSummary:
    sweep_dir: Path
    jobs: list[JobResult]  # best first; jobs that did not complete last, in job order
    seed_groups: list[SeedGroup] = field(default_factory=list)

    @property
    def failed(self) -> list[JobResult]:
        return sorted((job for job in self.jobs if job.status != "completed"), key=lambda job: job.job)

    @property
    def exit_code(self) -> int:
        """0 when every job completed, else the exit code of the first job that did not."""
        failed = self.failed
        return (failed[0].exit_code or 1) if failed else 0


# The sweeps this process finished, for the CLI's exit code. Hydra instantiates the callback from
# the config and swallows what a callback raises, so this is the one way back to the command.
finished: list[SweepSummary] = []


def read_sweep(sweep_dir: Path) -> SweepSummary:
    """Read every job directory under `sweep_dir` (those Hydra made: with .hydra/ or status.json)."""
    sweep_dir = Path(sweep_dir)
    job_dirs = [d for d in sweep_dir.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / STATUS_FILE).exists())]
    jobs = sorted((read_job(d) for d in job_dirs), key=_rank)
    return SweepSummary(sweep_dir, jobs, seed_groups(jobs))


def read_job(job_dir: Path) -> JobResult:
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    number, _, _ = job_dir.name.partition("_")
    overrides: list[str] = []
    if hydra_file.exists():
        hydra_cfg = OmegaConf.load(hydra_file).hydra
        excluded = set(hydra_cfg.job.config.override_dirname.exclude_keys)
        overrides = [o for o in hydra_cfg.overrides.task if _key(o) not in excluded]
        number = str(hydra_cfg.job.get("num", number))
    job = JobResult(job=int(number) if number.isdigit() else -1, name=job_dir.name, overrides=overrides,
                    status="missing", exit_code=1)
    status = read_status(job_dir)
    if status is not None:
        job.status, job.error = effective_status(status), status.get("error")
        job.exit_code = 0 if job.status == "completed" else status.get("exit_code", 1)
        if job.status == "stale":
            job.error = f"status says running, but its process {status.get('pid')} is gone: killed or crashed"
    if job.status == "completed" and (job_dir / SUMMARY_FILE).exists():
        summary = read_json(job_dir / SUMMARY_FILE)
        job.monitor, job.mode, job.best_value = summary["monitor"], summary.get("mode"), summary["best_value"]
        # dataset.test_fraction=0 leaves no test split: no test metric (the table says so)
        job.test_metric = "test/" + job.monitor.partition("/")[2] if summary["test"] else None
        job.test_value = summary["test"].get(job.test_metric) if job.test_metric else None
        job.epochs, job.duration_s = summary["epochs_completed"], summary["duration_s"]
    return job


def seed_groups(jobs: list[JobResult]) -> list[SeedGroup]:
    """Groups of two or more jobs whose overrides are equal once `seed=` is left out."""
    by_key: dict[tuple[str, ...], list[JobResult]] = {}
    for job in sorted(jobs, key=lambda j: j.job):
        by_key.setdefault(tuple(o for o in job.overrides if _key(o) != "seed"), []).append(job)
    groups = []
    for key, members in by_key.items():
        if len(members) < 2:
            continue
        done = [j for j in members if j.status == "completed"]
        group = SeedGroup(list(key), [j.job for j in members], len(done))
        group.best_mean, group.best_std = _mean_std([j.best_value for j in done])
        group.test_mean, group.test_std = _mean_std([j.test_value for j in done])
        groups.append(group)
    return groups


def write_summary(summary: SweepSummary) -> None:
    """summary.csv (one row per job) and summary.json (jobs and seed groups) in the sweep directory."""
    with open(summary.sweep_dir / SUMMARY_CSV, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for job in summary.jobs:
            writer.writerow({**asdict(job), "overrides": " ".join(job.overrides)})
    write_json(summary.sweep_dir / SUMMARY_FILE, {
        "sweep_dir": str(summary.sweep_dir),
        "completed": len(summary.jobs) - len(summary.failed),
        "failed": len(summary.failed),
        "jobs": [asdict(job) for job in summary.jobs],
        "seed_groups": [asdict(group) for group in summary.seed_groups],
    })


def show(summary: SweepSummary, console: Optional[Console] = None) -> None:
    """The leaderboard, the mean ± std over seeds when seeds were swept, and each failure's error."""
    console = console or make_console()
    monitors = {job.monitor for job in summary.jobs if job.monitor}
    monitor = monitors.pop() if len(monitors) == 1 else "val metric"
    test_metric = "test/" + monitor.partition("/")[2] if "/" in monitor else "test metric"
    # Overrides every job shares go in the caption; the rows show what differs.
    shared = set.intersection(*(set(job.overrides) for job in summary.jobs)) if len(summary.jobs) > 1 else set()
    caption = f"all jobs: {' '.join(o for o in summary.jobs[0].overrides if o in shared)}" if shared else None
    table = Table(title=f"leaderboard: {summary.sweep_dir}", caption=caption)
    for column in ("job", "overrides", "status"):
        table.add_column(column)
    for column in (f"best {monitor}", test_metric, "epochs", "time"):
        table.add_column(column, justify="right")
    for job in summary.jobs:
        differing = " ".join(o for o in job.overrides if o not in shared)
        no_test = job.status == "completed" and job.test_metric is None  # dataset.test_fraction=0
        tested = "no test split" if no_test else _number(job.test_value)
        table.add_row(str(job.job), differing or "(none)", job.status, _number(job.best_value),
                      tested, _number(job.epochs), _seconds(job.duration_s))
    console.print(table)
    if summary.seed_groups:
        seeds = Table(title="mean ± std over seeds")
        for column in ("overrides", "jobs", "completed"):
            seeds.add_column(column)
        for column in (f"best {monitor}", test_metric):
            seeds.add_column(column, justify="right")
        for group in summary.seed_groups:
            seeds.add_row(" ".join(o for o in group.overrides if o not in shared) or "(none)", ",".join(map(str, group.jobs)), str(group.completed),
                          _mean_pm_std(group.best_mean, group.best_std), _mean_pm_std(group.test_mean, group.test_std))
        console.print(seeds)
    for job in summary.failed:
        console.print(f"job {job.name}: {job.status}: {job.error or 'no error recorded'}", markup=False, soft_wrap=True)


class Leaderboard(Callback):
    """Hydra callback: shares the machine among parallel jobs at the start, writes the leaderboard at the end.

    Under torchrun (a sweep whose every job runs on all the processes) rank 0 alone does either.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        parallel = parallel_jobs_of(config.hydra)
        if parallel > 1:  # inherited by the job processes that joblib and submitit start from here
            os.environ[PARALLEL_JOBS_ENV] = str(parallel)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if os.environ.get("RANK", "0") != "0":
            return
        summary = read_sweep(Path(config.hydra.sweep.dir))
        write_summary(summary)
        show(summary)
        print(f"sweep summary: {summary.sweep_dir / SUMMARY_CSV}, {summary.sweep_dir / SUMMARY_FILE}")
        print(f"tensorboard --logdir {summary.sweep_dir}")
        finished.append(summary)


def parallel_jobs_of(hydra_cfg: DictConfig) -> int:
    """How many jobs the configured launcher runs at once on this machine.

    The basic launcher runs one at a time; on Slurm each job has its own allocation, so its
    cores are its own (1 here). joblib runs `n_jobs` (-1: all CPUs, as joblib counts), and
    submitit_local starts every job of a batch at once; neither runs more than a batch.
    """
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    batch = sweep_batch_size(hydra_cfg)
    if launcher.endswith("JoblibLauncher"):
        n_jobs = int(hydra_cfg.launcher.n_jobs)
        slots = n_jobs if n_jobs > 0 else (os.cpu_count() or 1) + 1 + n_jobs
    elif launcher.endswith("submitit_launcher.LocalLauncher"):
        slots = batch
    else:
        return 1
    return max(1, min(slots, batch))


def sweep_batch_size(hydra_cfg: DictConfig) -> int:
    """Jobs launched together: the number of combinations of the sweep overrides (basic sweeper),
    capped by `max_batch_size`, or the sweeper's `n_jobs` (Optuna's trials per batch).

    As Hydra's basic sweeper does, the sweep is `hydra.sweeper.params` (where a recipe puts it)
    followed by the command line, a later value for the same key replacing an earlier one.
    """
    sweeper = hydra_cfg.sweeper
    if sweeper.get("n_jobs"):
        return int(sweeper.n_jobs)
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    values_per_key: dict[str, int] = {}
    for override in OverridesParser.create().parse_overrides(params + list(hydra_cfg.overrides.task)):
        sweep = override.is_sweep_override()
        values_per_key[override.get_key_element()] = len(list(override.sweep_string_iterator())) if sweep else 1
    size = math.prod(values_per_key.values())
    return min(size, sweeper.max_batch_size) if sweeper.get("max_batch_size") else size


def _key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _rank(job: JobResult) -> tuple:
    """Completed jobs by their best validation value (direction from the task), then the rest by job number."""
    if job.status != "completed" or job.best_value is None:
        return (1, 0.0, job.job)
    return (0, -job.best_value if job.mode == "max" else job.best_value, job.job)


def _mean_std(values: list[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _number(value: Optional[float]) -> str:
    if value is None:
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _seconds(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}s"


def _mean_pm_std(mean: Optional[float], std: Optional[float]) -> str:
    return "-" if mean is None else f"{mean:.4f} ± {std:.4f}"
