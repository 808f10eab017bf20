"""Binary: the ROC and precision-recall curves (PNG, TensorBoard image and PR-curve plugin), the confusion
counts at the threshold; predictions as the class name (and the positive class's probability)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.data.card import DataCard
from dlrun.report import plots
from dlrun.tasks import Task
from dlrun.tools.outputs.base import OutputOptions, TaskOutputs

CURVES_FILE = "roc_pr_curves.png"


class YesNoOutputs(TaskOutputs):
    """What Binary and Multilabel share: the pass's probabilities and 0/1 targets, (N, labels), kept on the device."""

    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.probabilities: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    @property
    def labels(self) -> list[str]:
        """One name per output: the positive class (binary) or the labels (multilabel)."""
        return self.card.classes[-1:] if self.card.task == "binary" else self.card.classes

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        count = len(self.labels)
        self.probabilities.append(outputs.detach().float().reshape(len(outputs), count).sigmoid())
        self.targets.append(targets.detach().float().reshape(len(targets), count))

    def joined(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        if not self.probabilities:
            return None
        return torch.cat(self.probabilities).cpu(), torch.cat(self.targets).cpu()

    def probability_rows(self, model: nn.Module, inputs: torch.Tensor) -> list[list[float]]:
        return model(inputs).float().reshape(len(inputs), len(self.labels)).sigmoid().cpu().tolist()


class BinaryOutputs(YesNoOutputs):
    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.summary: dict[str, Any] = {}

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        from torchmetrics.functional.classification import (binary_auroc, binary_average_precision,
                                                            binary_precision_recall_curve, binary_roc)

        joined = self.joined()
        if joined is None:
            return {}
        probabilities, targets = joined[0][:, 0], joined[1][:, 0].long()
        predicted = probabilities >= self.card.threshold
        truth = targets.bool()
        confusion = {"true_positives": int((predicted & truth).sum()),
                     "false_positives": int((predicted & ~truth).sum()),
                     "false_negatives": int((~predicted & truth).sum()),
                     "true_negatives": int((~predicted & ~truth).sum())}
        self.summary = {"positive_class": self.card.classes[-1], "threshold": self.card.threshold,
                        "positives": int(truth.sum()), "examples": len(truth), "confusion": confusion}
        if 0 < int(truth.sum()) < len(truth):  # both classes present: the curves are defined
            false_positive_rate, true_positive_rate, _ = binary_roc(probabilities, targets)
            precision, recall, _ = binary_precision_recall_curve(probabilities, targets)
            chart = plots.line_chart([
                plots.Panel(f"ROC curve: {self.card.classes[-1]} is positive",
                            [plots.Curve(f"model (AUC {float(binary_auroc(probabilities, targets)):.4f})",
                                         false_positive_rate.tolist(), true_positive_rate.tolist()),
                             plots.Curve("chance", [0, 1], [0, 1], dashed=True)],
                            xlabel="false positive rate", ylabel="true positive rate"),
                plots.Panel("precision-recall curve",
                            [plots.Curve(f"model (AP {float(binary_average_precision(probabilities, targets)):.4f})",
                                         recall.tolist(), precision.tolist()),
                             plots.Curve("share of positives", [0, 1], [float(truth.float().mean())] * 2,
                                         dashed=True)],
                            xlabel="recall", ylabel="precision")])
            plots.save_png(chart, folder / CURVES_FILE)
            writer.add_image("eval/roc_pr_curves", plots.pixels(chart), dataformats="HWC")
            writer.add_pr_curve("eval/pr_curve", targets, probabilities)  # TensorBoard's PR CURVES tab
            self.summary["curves"] = CURVES_FILE
        return {"binary": self.summary}

    def tables(self) -> list[Table]:
        if not self.summary:
            return []
        counts = self.summary["confusion"]
        table = Table(title=f"at threshold {self.summary['threshold']:g} ({self.summary['positive_class']} is "
                            "positive)")
        table.add_column("true \\ predicted")
        for column in (self.card.classes[-1], self.card.classes[0]):
            table.add_column(column, justify="right")
        table.add_row(self.card.classes[-1], str(counts["true_positives"]), str(counts["false_negatives"]))
        table.add_row(self.card.classes[0], str(counts["false_positives"]), str(counts["true_negatives"]))
        return [table]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        negative, positive = self.card.classes[0], self.card.classes[-1]
        rows = []
        for identifier, (probability,) in zip(ids, self.probability_rows(model, inputs)):
            columns: dict[str, Any] = {"prediction": positive if probability >= self.card.threshold else negative}
            if self.options.probs:
                columns[f"prob_{positive}"] = round(probability, 6)
            rows.append((identifier, columns))
        return rows

    def columns(self) -> list[str]:
        return ["prediction", *([f"prob_{self.card.classes[-1]}"] if self.options.probs else [])]
