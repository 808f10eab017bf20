"""What dlrun-eval writes for each task besides its metrics, and what a dlrun-predict row holds.

A task names its report with the `Task.report` hook (dlrun.tasks), so a new task (detection)
brings its own without changes here. A `Report` is driven so:

- evaluation: `update(inputs, outputs, targets)` after every batch (device tensors only: no
  host sync per batch), then `finish(folder, writer, model, task)` writes the task's files into
  the evaluation folder and pictures into its TensorBoard events, and returns what metrics.json
  adds (the task has just scored the pass); `tables()` gives what the console shows;
- prediction: `rows(model, inputs, ids)` runs a batch and gives its CSV rows as (id, columns):
  one per input for most tasks, one per detected box for detection (dlrun.detection.report).

Classification: the confusion matrix (JSON counts, PNG, TensorBoard image), precision, recall
and F1 per class, and for images a grid of the most confidently wrong examples. Regression: a
predicted-versus-true scatter and residual statistics. Language model: a generated text.
Detection's report lives with detection (dlrun.detection.report).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch
from rich.table import Table
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun import plots
from dlrun.atomic import atomic_write
from dlrun.data.card import DataCard
from dlrun.errors import DataError
from dlrun.rundir import write_json

if TYPE_CHECKING:
    from dlrun.tasks import Task

log = logging.getLogger("dlrun")


@dataclass(frozen=True)
class ReportOptions:
    probs: bool = False  # prediction: a probability column per class
    prefix: Optional[str] = None  # language model: the text to continue (None: the run's sample prefix)
    length: int = 50  # language model: tokens to generate
    wrong_examples: int = 16  # classification of images: how many confidently wrong examples to draw
    min_score: float = 0.5  # detection: the boxes predicted (and drawn) score this or more
    draw: Optional[Path] = None  # detection: a folder for the images with their predicted boxes drawn


class Report:
    """The default: nothing beyond the task's metrics, and no prediction rows."""

    def __init__(self, card: DataCard, options: ReportOptions = ReportOptions()) -> None:
        self.card = card
        self.options = options

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One evaluation batch (targets are indices of the model's classes)."""

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: "Task") -> dict[str, Any]:
        return {}

    def tables(self) -> list[Table]:
        return []

    def columns(self) -> list[str]:
        """The columns of a prediction row (the CSV header, also when there are no rows)."""
        return ["prediction"]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """The CSV rows (id, columns) of a batch of `inputs` whose ids are `ids`."""
        raise DataError(f"dlrun-predict has no rows for the task {self.card.task!r}")


class ClassificationReport(Report):
    def __init__(self, card: DataCard, options: ReportOptions = ReportOptions()) -> None:
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

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: "Task") -> dict[str, Any]:
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
            table.add_row(name, *(_number(scores[key]) for key in ("precision", "recall", "f1")),
                          str(int(scores["support"])))
        macro = macro_average(self.per_class)
        table.add_row("macro average", *(_number(macro[key]) for key in ("precision", "recall", "f1")),
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


class RegressionReport(Report):
    def __init__(self, card: DataCard, options: ReportOptions = ReportOptions()) -> None:
        super().__init__(card, options)
        self.predicted: list[torch.Tensor] = []
        self.true: list[torch.Tensor] = []
        self.residuals: dict[str, float] = {}

    def update(self, inputs: torch.Tensor, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.predicted.append(outputs.detach().float().reshape(-1))
        self.true.append(targets.detach().float().reshape(-1))

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: "Task") -> dict[str, Any]:
        if not self.predicted:
            return {}
        predicted, true = torch.cat(self.predicted).cpu().numpy(), torch.cat(self.true).cpu().numpy()
        self.residuals = residual_statistics(predicted, true)
        chart = plots.scatter_chart(true, predicted, f"predicted vs true (RMSE {self.residuals['rmse']:.4g})")
        plots.save_png(chart, folder / "predicted_vs_true.png")
        writer.add_image("eval/predicted_vs_true", plots.pixels(chart), dataformats="HWC")
        return {"residuals": self.residuals}

    def tables(self) -> list[Table]:
        if not self.residuals:
            return []
        table = Table(title="residuals", caption="predicted - true")
        table.add_column("statistic")
        table.add_column("value", justify="right")
        for name, value in self.residuals.items():
            table.add_row(name, _number(value))
        return [table]

    def rows(self, model: nn.Module, inputs: torch.Tensor, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        # dataset.log_target only changes how the run was scored: the model predicts the target's own units.
        values = model(inputs).float().reshape(len(inputs), -1)[:, 0].cpu().tolist()
        return [(identifier, {"prediction": value}) for identifier, value in zip(ids, values)]


class LanguageModelReport(Report):
    def __init__(self, card: DataCard, options: ReportOptions = ReportOptions()) -> None:
        super().__init__(card, options)
        self.text = ""

    def generate(self, model: nn.Module, prefix: str, length: int) -> str:
        """`prefix` continued greedily by `length` tokens (as each epoch's sample is)."""
        from dlrun.tasks import LanguageModel

        tokens = self.card.vocabulary["tokens"]
        separator = self.card.vocabulary["separator"]
        index = {token: i for i, token in enumerate(tokens)}
        pieces = list(prefix) if separator == "" else prefix.split()
        unknown = sorted({piece for piece in pieces if piece not in index})
        if unknown:
            log.warning("the prefix holds %d token(s) the model does not know (read as <unk>): %s",
                        len(unknown), " ".join(repr(piece) for piece in unknown[:10]))
        ids = [index.get(piece, 0) for piece in pieces]
        return LanguageModel(tokens, separator, ids, carry_state=False, sample_length=length).generate(model)

    def finish(self, folder: Path, writer: SummaryWriter, model: nn.Module, task: "Task") -> dict[str, Any]:
        prefix = self.options.prefix if self.options.prefix is not None else self.card.vocabulary["sample_prefix"]
        self.text = self.generate(model, prefix, self.options.length)
        atomic_write(folder / "generated.txt", lambda partial: partial.write_text(self.text + "\n"))
        writer.add_text("eval/generated", self.text)
        return {"generated": {"prefix": prefix, "length": self.options.length, "text": self.text}}

    def tables(self) -> list[Table]:
        table = Table(title="generated text", show_header=False)
        table.add_column("text")
        table.add_row(self.text)
        return [table] if self.text else []


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


def residual_statistics(predicted: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """Of the residuals predicted - true: count, mean (bias), std, MAE, RMSE, median and max |residual|, R²."""
    residuals = predicted - true
    spread = float(((true - true.mean()) ** 2).sum())
    return {"count": int(len(residuals)), "mean": float(residuals.mean()), "std": float(residuals.std()),
            "mae": float(np.abs(residuals).mean()), "rmse": float(math.sqrt((residuals ** 2).mean())),
            "median_abs": float(np.median(np.abs(residuals))), "max_abs": float(np.abs(residuals).max()),
            "r2": 1 - float((residuals ** 2).sum()) / spread if spread > 0 else float("nan")}


def _number(value: Optional[float]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.4f}"
