"""What the tools do with a task's outputs: the files dlrun-eval writes besides the metrics, and the rows of dlrun-predict.

Each task has its `TaskOutputs` (dlrun.tools.outputs.OUTPUTS, by task name), driven so:

- evaluation: `update(inputs, outputs, targets)` after every batch (device tensors only: no
  host sync per batch), then `finish(folder, writer, model, task)` writes the task's files into
  the evaluation folder and pictures into its TensorBoard events, and returns what metrics.json
  adds (the task has just scored the pass); `tables()` gives what the console shows;
- prediction: `rows(model, inputs, ids)` runs a batch and gives its CSV rows as (id, columns):
  one per input for most tasks, one per detected box for detection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.data.card import DataCard
from dlrun.errors import DataError
from dlrun.tasks import Task


@dataclass(frozen=True)
class OutputOptions:
    probs: bool = False  # prediction: a probability column per class (binary: the positive one; multilabel: label)
    prefix: Optional[str] = None  # language model: the text to continue (None: the run's sample prefix)
    length: int = 50  # language model: tokens to generate
    wrong_examples: int = 16  # classification of images: how many confidently wrong examples to draw
    min_score: float = 0.5  # detection: the boxes predicted (and drawn) score this or more
    draw: Optional[Path] = None  # detection: a folder for the images with their predicted boxes drawn


class TaskOutputs:
    """The default: nothing beyond the task's metrics, and no prediction rows."""

    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        self.card = card
        self.options = options

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One evaluation batch (targets are indices of the model's classes)."""

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        return {}

    def tables(self) -> list[Table]:
        return []

    def columns(self) -> list[str]:
        """The columns of a prediction row (the CSV header, also when there are no rows)."""
        return ["prediction"]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """The CSV rows (id, columns) of a batch of `inputs` whose ids are `ids`."""
        raise DataError(f"dlrun-predict has no rows for the task {self.card.task!r}")


def number(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"
