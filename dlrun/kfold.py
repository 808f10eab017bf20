"""K-fold cross-validation (`trainer.kfold=K`): K runs, each validating on another fold.

Each fold is a full run in `<run_dir>/fold_<k>/` (its own checkpoints, TensorBoard events and
summary.json); the run directory's summary.json lists every fold's final metrics and their
mean and standard deviation, which are also printed as a table. An interrupted K-fold run
continues fold by fold: completed folds are kept, the interrupted one goes on from its last.pt.
"""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig
from rich.table import Table

from dlrun import logs
from dlrun.checkpoint import LAST
from dlrun.rundir import SUMMARY_FILE, clear_training_outputs, read_json, write_json

log = logging.getLogger("dlrun")
SPLITS = ("train/", "val/", "test/")


def train_folds(cfg: DictConfig, run_dir: Path, epochs: int, in_place: bool,
                train: Callable[..., dict[str, Any]], writes: bool = True) -> dict[str, Any]:
    """Call `train(fold_dir, fold=k, resume_from=checkpoint, in_place=...)` for every fold; summarize them all.

    Continuing the run in place (`in_place`), a fold that completed is not trained again and
    an unfinished one continues from its own last.pt (`checkpoint`; None: from scratch).
    `writes`: False for the processes of a distributed run other than rank 0, which only train.
    """
    started = time.perf_counter()
    folds = cfg.trainer.kfold
    rows = []
    for fold in range(folds):
        log.info("fold %d/%d", fold + 1, folds)
        fold_dir = run_dir / f"fold_{fold}"
        if writes:
            fold_dir.mkdir(parents=True, exist_ok=True)
        summary = _completed_fold(fold_dir, epochs) if in_place else None
        if summary is None:
            last = fold_dir / "checkpoints" / LAST
            source = last if in_place and last.exists() else None
            if source is None and writes:
                clear_training_outputs(fold_dir)
            summary = train(fold_dir, fold=fold, resume_from=source, in_place=source is not None)
        metrics = {name: value for name, value in {**summary["final"], **summary["test"]}.items()
                   if name.startswith(SPLITS)}
        rows.append({"fold": fold, "best_epoch": summary["best_epoch"], **metrics})
        device, monitor = summary["device"], summary["monitor"]
    names = [name for name in rows[0] if name.startswith(SPLITS)]
    mean = {name: statistics.fmean(row[name] for row in rows) for name in names}
    std = {name: statistics.stdev(row[name] for row in rows) for name in names}
    # The keys of a single run's summary, filled with fold means, so sweeps, the leaderboard and
    # sweep.resume treat a cross-validated job like any other.
    result = {"status": "completed", "kfold": folds, "monitor": monitor, "mode": summary["mode"],
              "best_value": mean[monitor], "best_epoch": None, "epochs_completed": summary["epochs_completed"],
              "final": {name: value for name, value in mean.items() if not name.startswith("test/")},
              "test": {name: value for name, value in mean.items() if name.startswith("test/")},
              "folds": rows, "mean": mean, "std": std, "duration_s": time.perf_counter() - started,
              "device": device, "world_size": summary.get("world_size", 1), "environment": summary["environment"]}
    if writes:
        write_json(run_dir / SUMMARY_FILE, result)
    logs.console.print(_table(rows, names, mean, std))
    log.info("%d-fold %s: %s", folds, monitor, f"{mean[monitor]:.4f} ± {std[monitor]:.4f}")
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
