"""What a run shows on the console (rich): its start, a progress bar per epoch, one line per epoch, the results.

Everything shown is also in the log (dlrun.log in the run directory); TensorBoard and
metrics.jsonl are dlrun.report.metrics_log's. In a terminal, tables are rich's at the terminal's
width; piped or redirected (a log file, CI, a Slurm output file) they are plain text at their
full width, so that no number is ever cut short to `2855…`.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.table import Table

log = logging.getLogger("dlrun")
# Wide enough for any table dlrun prints: rich then draws each at its natural width.
PIPED_WIDTH = 10_000
T = TypeVar("T")


def make_console() -> Console:
    """rich's console for a terminal; for a pipe or a file, plain text (no colours) that is never cut to a width."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=PIPED_WIDTH, no_color=True, highlight=False)


console = make_console()


def with_progress(batches: Iterable[T], total: int, description: str) -> Iterator[T]:
    """A live progress bar in a terminal; nothing when stdout is a file (the epoch line says it all)."""
    if not console.is_terminal:
        yield from batches
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task(description, total=total)
        for batch in batches:
            yield batch
            progress.advance(bar)


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float]) -> str:
    """`epoch 3/10 train/loss 0.2310 train/acc 0.9312 ...` — one greppable line per epoch."""
    parts = [f"epoch {epoch}/{epochs}"]
    for name, value in metrics.items():
        parts.append(f"{name} {_format(value)}")
    return "  ".join(parts)


def show_start(choices: dict[str, str], overrides: list[str], device: str, model_table: Table) -> None:
    if choices:
        log.info("config: %s", " ".join(f"{group}={option}" for group, option in choices.items()))
    if overrides:
        log.info("changed: %s", " ".join(overrides))
    log.info("device: %s", device)
    console.print(model_table)


def show_results(results: dict[str, dict[str, float]], run_dir: Path) -> None:
    """The final table (rows: train/val/test) and the command that opens this run in TensorBoard."""
    names = sorted({name for metrics in results.values() for name in metrics})
    table = Table(title="results")
    table.add_column("split")
    for name in names:
        table.add_column(name, justify="right")
    for split, metrics in results.items():
        table.add_row(split, *(_format(metrics[n]) if n in metrics else "" for n in names))
    console.print(table)
    log.info("run directory: %s", run_dir)
    log.info("tensorboard --logdir %s", run_dir)


def _format(value: float) -> str:
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return str(value)
    if isinstance(value, int) or abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
