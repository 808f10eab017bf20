"""Yes/no targets: one logit per label, binary cross-entropy, accuracy and F1 at a threshold, ROC-AUC and PR-AUC.

`Binary` is one yes/no label per example (a single sigmoid output: d2l's logistic regression);
`dlrun.tasks.multilabel.Multilabel` is several at once. Both train with BCE-with-logits, with
`dataset.pos_weight` (a number, one per label, or `auto`: negatives / positives of the training
split) weighing the positives of an imbalanced label, and predict yes where the probability is at
least `dataset.threshold` (0.5). AUC and average precision need every score of a pass: on
evaluation passes (validation, test, dlrun-eval) they are kept on the device (dlrun.tasks.scores)
and computed once the pass is over. Training passes report the metrics that sums give (loss,
accuracy, F1): an AUC over weights that change batch by batch says little, and sums are exact
however the epoch is split (over processes, or by a resumed checkpoint). Without a validation
split the training loss picks the best checkpoint.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, ListConfig

from dlrun.data.card import yes_threshold
from dlrun.data.task_targets import split_targets
from dlrun.errors import ConfigError
from dlrun.tasks.base import Task, as_float32, count_tensor, refuse_other_options
from dlrun.tasks.scores import PassScores, f1_scores, ranking_metrics

if TYPE_CHECKING:
    from dlrun.data.build import Data


class YesNoLabels(Task):
    """Shared by Binary and Multilabel: targets (N, labels) of 0/1, one logit per label.

    Per batch, on the device: [loss x examples, examples, exact matches (every label right), then per label
    true positives, predicted positives, actual positives]. The best checkpoint has the highest val/auc
    (the lowest train/loss without validation: `fit_to`).
    """

    metric, mode = "auc", "max"

    def __init__(self, labels: Sequence[str], threshold: float = 0.5,
                 pos_weight: Optional[Sequence[float]] = None) -> None:
        if not 0 < threshold < 1:
            raise ConfigError(f"dataset.threshold={threshold} is out of range: must be in (0, 1)")
        self.labels = [str(label) for label in labels]
        self.threshold = threshold
        self.logit_threshold = math.log(threshold / (1 - threshold))  # p >= t  <=>  logit >= log(t / (1 - t))
        self.pos_weight = None if pos_weight is None else [float(weight) for weight in pos_weight]
        self.expected_outputs = len(self.labels)
        self.scores = PassScores()
        self.ranking = False  # whether this pass keeps its scores for AUC and AP: evaluation passes do
        self._weights: dict[str, torch.Tensor] = {}

    def fit_to(self, cfg: DictConfig, data: "Data") -> "YesNoLabels":
        """Checked against the run's other target options; without a validation split, the training loss picks
        the best epoch (training passes have no AUC)."""
        refuse_other_options(cfg.dataset, str(cfg.dataset.task))
        if len(data.val) == 0:
            self.metric, self.mode = "loss", "min"
        return self

    def start_pass(self, training: bool) -> None:
        self.scores.clear()
        self.ranking = not training

    def columns(self, tensor: torch.Tensor) -> torch.Tensor:
        """Outputs or targets as (batch, labels)."""
        return tensor.reshape(len(tensor), len(self.labels))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.columns(outputs).float(), self.columns(targets).float(),
                                                  pos_weight=self._pos_weight_on(outputs.device))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        logits, truth = self.columns(outputs).float(), self.columns(targets).float()
        if self.ranking:
            self.scores.add(logits, truth)
        predicted = (logits >= self.logit_threshold).float()
        counts = torch.stack([predicted * truth, predicted, truth]).sum(dim=1)
        exact = (predicted == truth).all(dim=1).sum(dtype=torch.float32)
        head = torch.stack([as_float32(loss) * len(truth), count_tensor(len(truth), outputs.device), exact])
        return torch.cat([head, counts.reshape(-1)])

    def label_scores(self, stats: list[float]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
        """(loss, examples, exact, label accuracy) and per label precision, recall, F1, AUC, AP, support."""
        loss_sum, count, exact, *counts = stats
        labels = len(self.labels)
        tp, predicted, actual = (torch.tensor(counts[i * labels:(i + 1) * labels], dtype=torch.float64)
                                 for i in range(3))
        fp, fn = predicted - tp, actual - tp
        correct = count * labels - float(fp.sum() + fn.sum())
        per_label = {name: value.float().cpu() for name, value in f1_scores(tp, fp, fn).items()}
        per_label["support"] = (tp + fn).float()
        if self.ranking:  # every process takes part in the gathering: each scored its part of the pass
            joined = self.scores.joined()
            nan = torch.full((labels,), math.nan)
            ranked = ranking_metrics(*joined) if joined is not None else {"auc": nan, "ap": nan}
            per_label.update({name: value.cpu() for name, value in ranked.items()})
        self.scores.clear()
        overall = {"loss": loss_sum / count, "examples": count, "exact": exact / count,
                   "label_acc": correct / (count * labels)}
        return overall, per_label

    def _pos_weight_on(self, device: torch.device) -> Optional[torch.Tensor]:
        if self.pos_weight is None:
            return None
        key = str(device)
        if key not in self._weights:  # made once per device: no host-to-device copy per step
            self._weights[key] = torch.tensor(self.pos_weight, dtype=torch.float32, device=device)
        return self._weights[key]


class Binary(YesNoLabels):
    """One yes/no label per example from one logit: the model has 1 output, the target is 0 or 1.

    Metrics: loss, acc (at dataset.threshold), precision, recall, f1 (of the positive class), and on
    evaluation passes auc (ROC-AUC) and ap (average precision, the area under the precision-recall
    curve). `classes` are the class names (negative, positive), as the card keeps them; `labels` the
    output's, the positive class.
    """

    head = "one logit: the positive class's score"

    def __init__(self, classes: Sequence[str] = ("0", "1"), threshold: float = 0.5,
                 pos_weight: Optional[Sequence[float]] = None) -> None:
        super().__init__([str(classes[-1])], threshold, pos_weight)
        self.classes = [str(name) for name in classes]

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Binary":
        return cls(data.extras.get("classes") or ("0", "1"), threshold=yes_threshold(cfg.dataset),
                   pos_weight=pos_weight_from(cfg.dataset.get("pos_weight"), data, 1)).fit_to(cfg, data)

    def metrics(self, stats: list[float]) -> dict[str, float]:
        overall, per_label = self.label_scores(stats)
        names = ("precision", "recall", "f1", "auc", "ap") if "auc" in per_label else ("precision", "recall", "f1")
        return {"loss": overall["loss"], "acc": overall["label_acc"],
                **{name: float(per_label[name][0]) for name in names}}


def pos_weight_from(value: Any, data: "Data", labels: int) -> Optional[list[float]]:
    """dataset.pos_weight as one weight per label: null (none), a number, a list, or `auto`
    (each label's negatives / positives in the training split, 1 for a label without positives)."""
    if value is None:
        return None
    if value == "auto":
        targets = split_targets(data.train.split).float().reshape(-1, labels)
        positives = targets.sum(dim=0)
        negatives = len(targets) - positives
        return torch.where(positives > 0, negatives / positives.clamp(min=1), torch.ones_like(positives)).tolist()
    weights = list(value) if isinstance(value, (list, tuple, ListConfig)) else [value]
    if len(weights) == 1:
        weights = weights * labels
    if len(weights) != labels or not all(isinstance(w, (int, float)) and w > 0 for w in weights):
        raise ConfigError(f"dataset.pos_weight={value!r} is out of range: a number > 0, a list of {labels} "
                          "(one per label), auto (negatives / positives of the training split) or null")
    return [float(w) for w in weights]
