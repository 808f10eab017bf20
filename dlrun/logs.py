"""Where a run reports: TensorBoard scalars, metrics.jsonl, and the console (rich)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import atomic_write

log = logging.getLogger("dlrun")
console = Console()
T = TypeVar("T")


class MetricsLog:
    """One run's scalars: TensorBoard event files under tb/ and one JSON line per epoch.

    The event file also carries a custom-scalars layout that draws `train/<m>` and `val/<m>`
    on one chart for each of `overlay` (e.g. loss and acc): over- and under-fitting at a glance.

    Continuing a run in place (`continue_from`: the checkpoint's completed epochs and its count
    of metrics.jsonl lines), the lines written after that checkpoint are dropped and TensorBoard
    is told to purge the steps after it (`purge_step`), so every epoch appears once, in order,
    in one TensorBoard run.
    """

    def __init__(self, run_dir: Path, overlay: Iterable[str] = ("loss",),
                 continue_from: Optional[tuple[int, int]] = None) -> None:
        jsonl_path = Path(run_dir) / "metrics.jsonl"
        purge_step = None
        if continue_from is not None:
            epoch, lines = continue_from
            purge_step = epoch + 1
            self.lines = keep_first_lines(jsonl_path, lines)
        else:
            self.lines = 0
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)
        if continue_from is None:  # the layout is written once per run, at its start
            self.writer.add_custom_scalars(overlay_layout(overlay))
        self.jsonl = open(jsonl_path, "a")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.jsonl.write(json.dumps({"epoch": step, **metrics}) + "\n")
        self.jsonl.flush()
        self.lines += 1
        self.writer.flush()

    def write_text(self, tag: str, text: str, step: int) -> None:
        """A text (e.g. a language model's sample) in TensorBoard's TEXT tab and the console log."""
        self.writer.add_text(tag, text, step)
        self.writer.flush()
        log.info("%s: %s", tag, text)

    def write_image(self, tag: str, image: Any, step: int) -> None:
        """A picture (uint8 or [0, 1] float tensor, 3 x H x W), e.g. detections, in TensorBoard's IMAGES tab."""
        self.writer.add_image(tag, image, step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
        self.jsonl.close()

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def keep_first_lines(path: Path, count: int) -> int:
    """Cut a JSON-lines file to its first `count` complete lines (atomically); return how many remain."""
    if not path.exists():
        return 0
    complete = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    kept = complete[:count]
    if len(kept) != len(complete) or path.stat().st_size != sum(len(line.encode()) for line in kept):
        atomic_write(path, lambda temporary: temporary.write_text("".join(kept)))
    return len(kept)


def overlay_layout(metrics: Iterable[str]) -> dict[str, dict[str, list]]:
    """TensorBoard custom-scalars layout: one chart per metric with its train and val curves."""
    charts = {metric: ["Multiline", [f"^train/{metric}$", f"^val/{metric}$"]] for metric in metrics}
    return {"train vs val": charts}


def with_progress(batches: Iterable[T], total: int, description: str) -> Iterator[T]:
    """A live progress bar in a terminal; nothing when stdout is a file (the epoch line says it all)."""
    if not console.is_terminal:
        yield from batches
        return
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
