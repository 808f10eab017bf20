"""Ranking metrics of a whole pass (ROC-AUC, average precision) for yes/no targets, from torchmetrics.

Sums per batch cannot give an AUC: it needs every score of the pass. `PassScores` keeps them on
the device batch by batch (a list append: no host sync per step) and joins them once, when the
pass is scored; on several processes the parts are gathered from every process first.
torchmetrics is imported when a pass is scored, not with this module: it takes seconds to import.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist


class PassScores:
    """One pass's scores (logits) and 0/1 targets, (N,) or (N, labels), held where the model runs."""

    def __init__(self) -> None:
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def clear(self) -> None:
        self.scores, self.targets = [], []

    def add(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        self.scores.append(scores.detach())
        self.targets.append(targets.detach())

    def joined(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """(scores, targets) of the whole pass, over every process; None when the pass held no example."""
        scores = torch.cat(self.scores).float() if self.scores else None
        targets = torch.cat(self.targets).float() if self.targets else None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts: list[Optional[tuple[torch.Tensor, torch.Tensor]]] = [None] * dist.get_world_size()
            mine = (scores.cpu(), targets.cpu()) if scores is not None else None
            dist.all_gather_object(parts, mine)  # once per pass: each process scored its part of every batch
            present = [part for part in parts if part is not None]
            if not present:
                return None
            device = scores.device if scores is not None else torch.device("cpu")
            return (torch.cat([part[0] for part in present]).to(device),
                    torch.cat([part[1] for part in present]).to(device))
        return None if scores is None else (scores, targets)


def ranking_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """ROC-AUC (`auc`) and average precision (`ap`, the area under the precision-recall curve) per column
    of (N, labels) logits and 0/1 targets; NaN for a column whose targets are all alike (undefined)."""
    from torchmetrics.functional.classification import (binary_auroc, binary_average_precision, multilabel_auroc,
                                                        multilabel_average_precision)

    labels = targets.shape[1]
    positives = targets.sum(dim=0)
    defined = (positives > 0) & (positives < len(targets))
    probabilities = scores.sigmoid()
    nan = torch.full((labels,), math.nan, device=scores.device)
    if not bool(defined.any()):
        return {"auc": nan, "ap": nan}
    integer = targets.long()
    if labels == 1:  # torchmetrics' multilabel functions want two labels or more
        auc = binary_auroc(probabilities[:, 0], integer[:, 0]).reshape(1)
        ap = binary_average_precision(probabilities[:, 0], integer[:, 0]).reshape(1)
    else:
        auc = multilabel_auroc(probabilities, integer, num_labels=labels, average=None)
        ap = multilabel_average_precision(probabilities, integer, num_labels=labels, average=None)
    return {"auc": torch.where(defined, auc, nan), "ap": torch.where(defined, ap, nan)}


def nan_mean(values: torch.Tensor) -> float:
    """The mean of the defined (non-NaN) values; NaN when none is."""
    defined = values[~values.isnan()]
    return float(defined.mean()) if len(defined) else math.nan


def f1_scores(true_positives: torch.Tensor, false_positives: torch.Tensor,
              false_negatives: torch.Tensor) -> dict[str, torch.Tensor]:
    """Precision, recall and F1 per label from counts; 0 where undefined (as scikit-learn's zero_division=0)."""
    predicted = true_positives + false_positives
    actual = true_positives + false_negatives
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), torch.zeros_like(predicted))
    recall = torch.where(actual > 0, true_positives / actual.clamp(min=1), torch.zeros_like(actual))
    both = 2 * true_positives + false_positives + false_negatives
    f1 = torch.where(both > 0, 2 * true_positives / both.clamp(min=1), torch.zeros_like(both))
    return {"precision": precision, "recall": recall, "f1": f1}
