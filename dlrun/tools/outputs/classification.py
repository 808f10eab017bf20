"""Classification: the confusion matrix (JSON counts, PNG, TensorBoard image), precision, recall and F1
per class, and for images a grid of the most confidently wrong examples; predictions as class names."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.atomic import write_json
from dlrun.data.card import DataCard
from dlrun.report import plots
from dlrun.tasks import Task
from dlrun.tools.outputs.base import OutputOptions, TaskOutputs, number


class ClassificationOutputs(TaskOutputs):
    def __init__(self, card: DataCard, options: OutputOptions = OutputOptions()) -> None:
        super().__init__(card, options)
        self.counts: Optional[torch.Tensor] = None  # (true, predicted), on the device
        self.wrong: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None  # confidence, images, labels
        self.per_class: dict[str, dict[str, Optional[float]]] = {}

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        size = len(self.card.classes)
        probabilities = outputs.float().softmax(dim=-1)
        confidence, predicted = probabilities.max(dim=-1)
        # A confusion matrix is one bincount of true * classes + predicted (what torchmetrics computes,
        # without its seconds of import time).
        counts = torch.bincount(targets * size + predicted, minlength=size * size).reshape(size, size)
        self.counts = counts if self.counts is None else self.counts + counts
        if self.card.inputs == "image" and self.options.wrong_examples > 0:
            self._keep_most_confidently_wrong(inputs, confidence, predicted, targets)

    def _keep_most_confidently_wrong(self, inputs: torch.Tensor, confidence: torch.Tensor, predicted: torch.Tensor,
                                     targets: torch.Tensor) -> None:
        """The `wrong_examples` wrong predictions of highest confidence so far (right ones score -1)."""
        scores = torch.where(predicted != targets, confidence, torch.full_like(confidence, -1.0))
        labels = torch.stack([targets, predicted], dim=1)
        if self.wrong is not None:
            scores = torch.cat([self.wrong[0], scores])
            inputs = torch.cat([self.wrong[1], inputs.float()])
            labels = torch.cat([self.wrong[2], labels])
        keep = scores.topk(min(self.options.wrong_examples, len(scores))).indices
        self.wrong = (scores[keep], inputs[keep].float(), labels[keep])

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: Task) -> dict[str, Any]:
        if self.counts is None:
            return {}
        classes = self.card.classes
        counts = self.counts.cpu().numpy()
        write_json(folder / "confusion_matrix.json",
                    {"classes": classes, "rows": "true class", "columns": "predicted class", "counts": counts.tolist()})
        chart = plots.confusion_matrix_chart(counts, classes)
        plots.save_png(chart, folder / "confusion_matrix.png")
        writer.add_image("eval/confusion_matrix", plots.pixels(chart), dataformats="HWC")
        self.per_class = per_class_scores(counts, classes)
        result: dict[str, Any] = {"per_class": self.per_class, "macro": macro_average(self.per_class)}
        if self.wrong is not None:
            result["wrong_examples"] = self._draw_wrong(folder, writer)
        return result

    def _draw_wrong(self, folder: Path, writer: SummaryWriter) -> int:
        scores, images, labels = (part.cpu() for part in self.wrong)
        shown = scores >= 0
        if not shown.any():
            return 0
        classes = self.card.classes
        titles = [f"{classes[t]} → {classes[p]} ({s:.2f})" for s, (t, p) in zip(scores[shown].tolist(),
                                                                               labels[shown].tolist())]
        grid = plots.image_grid(images[shown].numpy(), titles)
        grid.suptitle("most confidently wrong: true → predicted (confidence)", fontsize="small")
        plots.save_png(grid, folder / "wrong_examples.png")
        writer.add_image("eval/wrong_examples", plots.pixels(grid), dataformats="HWC")
        return int(shown.sum())

    def tables(self) -> list[Table]:
        if not self.per_class:
            return []
        table = Table(title="per class")
        for column in ("class", "precision", "recall", "f1", "support"):
            table.add_column(column, justify="left" if column == "class" else "right")
        for name, scores in self.per_class.items():
            table.add_row(name, *(number(scores[key]) for key in ("precision", "recall", "f1")),
                          str(int(scores["support"])))
        macro = macro_average(self.per_class)
        table.add_row("macro average", *(number(macro[key]) for key in ("precision", "recall", "f1")),
                      str(sum(int(s["support"]) for s in self.per_class.values())), style="bold")
        return [table]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        probabilities = model(inputs).float().softmax(dim=-1).cpu()
        names = self.card.classes
        rows = []
        for identifier, row in zip(ids, probabilities.tolist()):
            best = max(range(len(row)), key=row.__getitem__)
            columns: dict[str, Any] = {"prediction": names[best]}
            if self.options.probs:
                columns.update({f"prob_{name}": round(value, 6) for name, value in zip(names, row)})
            rows.append((identifier, columns))
        return rows

    def columns(self) -> list[str]:
        return ["prediction", *(f"prob_{name}" for name in self.card.classes if self.options.probs)]




def per_class_scores(counts: np.ndarray, classes: list[str]) -> dict[str, dict[str, Optional[float]]]:
    """Precision, recall, F1 and support per class from a (true, predicted) count matrix; None where undefined."""
    true_positives = np.diag(counts).astype(float)
    predicted, actual = counts.sum(axis=0), counts.sum(axis=1)
    scores = {}
    for i, name in enumerate(classes):
        precision = true_positives[i] / predicted[i] if predicted[i] else None
        recall = true_positives[i] / actual[i] if actual[i] else None
        if precision is None or recall is None:
            f1 = None
        else:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        scores[name] = {"precision": precision, "recall": recall, "f1": f1, "support": int(actual[i])}
    return scores


def macro_average(per_class: dict[str, dict[str, Optional[float]]]) -> dict[str, Optional[float]]:
    """The unweighted mean over the classes present in the data (support > 0)."""
    present = [scores for scores in per_class.values() if scores["support"]]
    mean = {}
    for key in ("precision", "recall", "f1"):
        values = [scores[key] if scores[key] is not None else 0.0 for scores in present]
        mean[key] = float(np.mean(values)) if values else None
    return mean
