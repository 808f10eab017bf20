"""K-fold cross-validation (`trainer.kfold=K`): K runs, each validating on another fold; then, optionally, a refit.

Each fold is a full run in `<run_dir>/fold_<k>/` (its own checkpoints, TensorBoard events and
summary.json); the run directory's summary.json lists every fold's final metrics and their
mean and standard deviation, which are also printed as a table. An interrupted K-fold run
continues fold by fold: completed folds are kept, the interrupted one goes on from its last.pt.

With `trainer.kfold_refit=true` the folds are followed by the model a submission is made from
(d2l's house prices: choose the settings by K-fold, then train on all the data): one more run,
in `<run_dir>/refit/`, on every training row (the folds' training and validation rows pooled,
none held out for validation) for the folds' mean best epoch count, rounded. Its metrics are
the run summary's `refit`; dlrun-eval, dlrun-predict and dlrun-export use it when given the
K-fold run's directory.

dlrun.train walks `folds(...)`, trains each fold that is not complete, hands the fold
summaries to `combine`, and for a refit trains `refit_fold(...)` with `refit_config(...)`.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from omegaconf import DictConfig
from rich.table import Table

from dlrun.atomic import read_json, write_json
from dlrun.data.splits import ALL_ROWS
from dlrun.report.console import console
from dlrun.run.checkpoint import LAST
from dlrun.run.run_dir import REFIT_DIR, SUMMARY_FILE, clear_training_outputs

log = logging.getLogger("dlrun")
SPLITS = ("train/", "val/", "test/")


@dataclass
class Fold:
    """One fold of a K-fold run: where it writes, and what is left of it to do."""

    index: int  # 0 .. K-1, or ALL_ROWS for the refit
    directory: Path
    completed: Optional[dict[str, Any]] = None  # its summary.json when nothing is left to train
    checkpoint: Optional[Path] = None  # the last.pt it continues from; None: from scratch


def folds(folds_count: int, run_dir: Path, epochs: int, in_place: bool, writes: bool = True) -> Iterator[Fold]:
    """The folds in order, each readied just before it is trained.

    Continuing the run in place (`in_place`), a fold that completed is not trained again and an
    unfinished one continues from its own last.pt. `writes`: False for the processes of a
    distributed run other than rank 0, which only train.
    """
    for index in range(folds_count):
        log.info("fold %d/%d", index + 1, folds_count)
        yield _readied(Fold(index, run_dir / f"fold_{index}"), epochs, in_place, writes)


def refit_fold(run_dir: Path, epochs: int, in_place: bool, writes: bool = True) -> Fold:
    """The refit on every training row (trainer.kfold_refit), readied as a fold is."""
    log.info("refit on every training row for %d epochs (the folds' mean best epoch)", epochs)
    return _readied(Fold(ALL_ROWS, run_dir / REFIT_DIR), epochs, in_place, writes)


def refit_config(cfg: DictConfig, summaries: list[dict[str, Any]]) -> DictConfig:
    """The refit's config: the run's, for the folds' mean best epoch count (at least 1), with no early
    stopping (nothing validates it)."""
    best = [summary["best_epoch"] or summary["epochs_completed"] for summary in summaries]
    refit = cfg.copy()
    refit.trainer.epochs = max(1, round(statistics.fmean(best)))
    refit.regularization.early_stopping = 0
    return refit


def where(fold: Optional[int]) -> str:
    """The prefix of a fold's log lines: "fold 2: ", "refit: ", or nothing for a plain run."""
    if fold is None:
        return ""
    return "refit: " if fold == ALL_ROWS else f"fold {fold}: "


def _readied(fold: Fold, epochs: int, in_place: bool, writes: bool) -> Fold:
    """`fold` with what is left of it to do; a fold started afresh has its old training outputs cleared."""
    if writes:
        fold.directory.mkdir(parents=True, exist_ok=True)
    fold.completed = _completed_fold(fold.directory, epochs) if in_place else None
    if fold.completed is None:
        last = fold.directory / "checkpoints" / LAST
        fold.checkpoint = last if in_place and last.exists() else None
        if fold.checkpoint is None and writes:
            clear_training_outputs(fold.directory)
    return fold


def combine(summaries: list[dict[str, Any]], run_dir: Path, duration_s: float, writes: bool = True) -> dict[str, Any]:
    """The run's summary from its folds' summaries: their final metrics, mean and std; written and shown."""
    rows = []
    for fold, summary in enumerate(summaries):
        metrics = {name: value for name, value in {**summary["final"], **summary["test"]}.items()
                   if name.startswith(SPLITS)}
        rows.append({"fold": fold, "best_epoch": summary["best_epoch"], **metrics})
    last, monitor = summaries[-1], summaries[-1]["monitor"]
    names = [name for name in rows[0] if name.startswith(SPLITS)]
    mean = {name: statistics.fmean(row[name] for row in rows) for name in names}
    std = {name: statistics.stdev(row[name] for row in rows) for name in names}
    # The keys of a single run's summary, filled with fold means, so sweeps, the leaderboard and
    # sweep.resume treat a cross-validated job like any other.
    result = {"status": "completed", "kfold": len(rows), "monitor": monitor, "mode": last["mode"],
              "best_value": mean[monitor], "best_epoch": None, "epochs_completed": last["epochs_completed"],
              "final": {name: value for name, value in mean.items() if not name.startswith("test/")},
              "test": {name: value for name, value in mean.items() if name.startswith("test/")},
              "folds": rows, "mean": mean, "std": std, "duration_s": duration_s,
              "device": last["device"], "world_size": last.get("world_size", 1), "environment": last["environment"]}
    if writes:
        write_json(run_dir / SUMMARY_FILE, result)
    console.print(_table(rows, names, mean, std))
    log.info("%d-fold %s: %s", len(rows), monitor, f"{mean[monitor]:.4f} ± {std[monitor]:.4f}")
    return result


def add_refit(combined: dict[str, Any], refit: dict[str, Any], run_dir: Path, duration_s: float,
              writes: bool = True) -> dict[str, Any]:
    """The K-fold summary with the refit's (`refit`: its epochs, final training metrics, test metrics, examples)."""
    result = {**combined, "duration_s": duration_s,
              "refit": {"directory": REFIT_DIR, "epochs": refit["epochs_completed"], "final": refit["final"],
                        "test": refit["test"], "examples": refit.get("examples")}}
    if writes:
        write_json(run_dir / SUMMARY_FILE, result)
    tested = ", ".join(f"{name} {value:.4f}" for name, value in refit["test"].items()) or "no test split"
    log.info("refit on every training row (%s): %d epochs; %s", run_dir / REFIT_DIR, refit["epochs_completed"], tested)
    return result


def _table(rows: list[dict[str, Any]], names: list[str], mean: dict[str, float], std: dict[str, float]) -> Table:
    table = Table(title=f"{len(rows)}-fold cross-validation")
    table.add_column("fold")
    for name in names:
        table.add_column(name, justify="right")
    for row in rows:
        table.add_row(str(row["fold"]), *(f"{row[name]:.4f}" for name in names))
    table.add_row("mean ± std", *(f"{mean[name]:.4f} ± {std[name]:.4f}" for name in names), style="bold")
    return table


def _completed_fold(fold_dir: Path, epochs: int) -> Optional[dict[str, Any]]:
    """The fold's summary.json when it has nothing left to train, else None."""
    try:
        summary = read_json(fold_dir / SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    finished = summary.get("epochs_completed", 0) >= epochs or summary.get("stopped_early") is not None
    if finished:
        log.info("fold %s completed earlier: %s", fold_dir.name, fold_dir / SUMMARY_FILE)
    return summary if finished else None
