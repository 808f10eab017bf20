"""One run's scalars: TensorBoard event files under tb/ and one JSON line per epoch in metrics.jsonl."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import atomic_write

log = logging.getLogger("dlrun")


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


class NoMetricsLog:
    """A MetricsLog that writes nothing: what the processes other than rank 0 of a run hold."""

    lines = 0
    writer = None

    def write(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def write_text(self, tag: str, text: str, step: int) -> None:
        pass

    def __enter__(self) -> "NoMetricsLog":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


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
