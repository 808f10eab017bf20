"""Several yes/no labels per example (Kaggle's multi-label image sets): one logit per label, macro AUC and F1."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from omegaconf import DictConfig

from dlrun.data.card import yes_threshold
from dlrun.data.task_targets import split_targets
from dlrun.tasks.binary import YesNoLabels, pos_weight_from
from dlrun.tasks.scores import nan_mean

if TYPE_CHECKING:
    from dlrun.data.build import Data


class Multilabel(YesNoLabels):
    """Every label is its own yes/no question, answered by its own logit (BCE-with-logits; no softmax).

    Metrics: loss; acc (the share of labels right), exact_match (examples with every label
    right), f1 (the mean of the labels' F1: macro), f1_micro (F1 over all labels' counts together),
    auc and ap (macro: the mean over labels with both answers present; evaluation passes only).
    `per_label()` gives each label's precision, recall, F1, AUC, AP and support (positives) of the
    last pass scored.
    """

    head = "one output per label"

    def __init__(self, labels: Sequence[str], threshold: float = 0.5,
                 pos_weight: Optional[Sequence[float]] = None) -> None:
        super().__init__(labels, threshold, pos_weight)
        self.last_per_label: dict[str, dict[str, float]] = {}

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Multilabel":
        labels = data.extras.get("classes") or [str(i) for i in range(split_targets(data.train.split).shape[1])]
        return cls(labels, threshold=yes_threshold(cfg.dataset),
                   pos_weight=pos_weight_from(cfg.dataset.get("pos_weight"), data, len(labels))).fit_to(cfg, data)

    def metrics(self, stats: list[float]) -> dict[str, float]:
        overall, per_label = self.label_scores(stats)
        tp, predicted, actual = (sum(stats[3 + i * len(self.labels): 3 + (i + 1) * len(self.labels)]) for i in range(3))
        fp, fn = predicted - tp, actual - tp
        self.last_per_label = {label: {name: float(values[i]) for name, values in per_label.items()}
                               for i, label in enumerate(self.labels)}
        ranked = {"auc": nan_mean(per_label["auc"]), "ap": nan_mean(per_label["ap"])} if "auc" in per_label else {}
        return {"loss": overall["loss"], "acc": overall["label_acc"], "exact_match": overall["exact"],
                "f1": float(per_label["f1"].mean()),
                "f1_micro": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, **ranked}

    def per_label(self) -> dict[str, dict[str, float]]:
        """{label: {precision, recall, f1, support, auc, ap}} of the last pass scored."""
        if not self.last_per_label:
            raise RuntimeError("per_label() reads a scored pass; run one first (train.evaluate)")
        return self.last_per_label
