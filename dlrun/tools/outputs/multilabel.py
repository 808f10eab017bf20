"""Multilabel: each label's precision, recall, F1, AUC, AP and support (metrics.json and a table); predictions
as the space-separated labels that apply (Kaggle's multi-label format) and, with --probs, each label's probability."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.data.card import DataCard
from dlrun.tasks import Task
from dlrun.tools.outputs.base import OutputOptions, number
from dlrun.tools.outputs.binary import YesNoOutputs

SCORES = ("precision", "recall", "f1", "auc", "ap")


class MultilabelOutputs(YesNoOutputs):
    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.per_label: dict[str, dict[str, float]] = {}

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Nothing to keep: the task holds the pass's scores, which `finish` reads."""

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        self.per_label = task.per_label()  # the pass just scored: dlrun.tasks.multilabel
        writer.add_text("eval/per_label", "\n".join(
            ["| label | " + " | ".join(SCORES) + " | support |", "|---" * (len(SCORES) + 2) + "|"] +
            [f"| {label} | " + " | ".join(number(scores[key]) for key in SCORES) + f" | {int(scores['support'])} |"
             for label, scores in self.per_label.items()]))
        return {"per_label": self.per_label, "threshold": self.card.threshold}

    def tables(self) -> list[Table]:
        if not self.per_label:
            return []
        table = Table(title=f"per label (yes at probability >= {self.card.threshold:g})", caption="-: undefined")
        for column in ("label", *SCORES, "support"):
            table.add_column(column, justify="left" if column == "label" else "right")
        for label, scores in self.per_label.items():
            table.add_row(label, *(number(scores[key]) for key in SCORES), str(int(scores["support"])))
        return [table]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        for identifier, probabilities in zip(ids, self.probability_rows(model, inputs)):
            applies = [label for label, p in zip(self.labels, probabilities) if p >= self.card.threshold]
            columns: dict[str, Any] = {"prediction": " ".join(applies)}
            if self.options.probs:
                columns.update({f"prob_{label}": round(p, 6) for label, p in zip(self.labels, probabilities)})
            rows.append((identifier, columns))
        return rows

    def columns(self) -> list[str]:
        return ["prediction", *(f"prob_{label}" for label in self.labels if self.options.probs)]
