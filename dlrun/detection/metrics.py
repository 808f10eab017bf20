"""Mean average precision of an evaluation pass: torchmetrics' MeanAveragePrecision on pycocotools (COCO's rules)."""

from __future__ import annotations

import math
from typing import Any

import torch

from dlrun.detection.targets import scaled, to_records


class DetectionMetric:
    """Collects one pass's detections and ground truth; reports mAP@0.5 (`map50`) and mAP@[.5:.95] (`map`).

    Boxes are compared in pixels of the images the model saw, so COCO's small/medium/large
    areas mean what they say. Per-class AP (`per_class`) is what an evaluation report lists.
    """

    def __init__(self, classes: list[str]) -> None:
        from torchmetrics.detection import MeanAveragePrecision  # imported late: it takes a while

        self.classes = classes
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools",
                                           class_metrics=True, extended_summary=True)
        self.result: dict[str, Any] | None = None

    def update(self, detections: list[dict[str, torch.Tensor]], targets: torch.Tensor,
               image_size: tuple[int, int]) -> None:
        """Add a batch: `detections` per image (boxes in [0, 1]) and its padded targets (B, M, 5)."""
        height, width = image_size
        predictions = [{"boxes": scaled(d["boxes"].detach().float().cpu(), height, width),
                        "scores": d["scores"].detach().float().cpu(), "labels": d["labels"].detach().cpu().long()}
                       for d in detections]
        truth = [{"boxes": scaled(t["boxes"].cpu(), height, width), "labels": t["labels"].cpu()}
                 for t in to_records(targets.detach().float())]
        self.metric.update(predictions, truth)
        self.result = None

    def compute(self) -> dict[str, float]:
        """{"map50", "map"}; NaN when the pass held no objects at all (pycocotools' -1)."""
        result = self._computed()
        return {"map50": _defined(result["map_50"]), "map": _defined(result["map"])}

    def per_class(self) -> dict[str, dict[str, float]]:
        """AP per class name: {"ap50": AP at IoU 0.5, "ap": AP over IoU 0.5:0.95}; NaN for a class without objects."""
        result = self._computed()
        found = {int(c): k for k, c in enumerate(torch.atleast_1d(result["classes"]).tolist())}
        per_class_ap = torch.atleast_1d(result["map_per_class"])
        table = {}
        for index, name in enumerate(self.classes):
            k = found.get(index)
            if k is None:
                table[name] = {"ap50": math.nan, "ap": math.nan}
                continue
            # precision: (IoU thresholds, recall thresholds, classes, areas, max detections); IoU 0.5 is first,
            # area "all" first, max detections 100 last. -1 marks recall levels never reached.
            precision = result["precision"][0, :, k, 0, -1]
            reached = precision[precision > -1]
            table[name] = {"ap50": float(reached.mean()) if len(reached) else math.nan,
                           "ap": _defined(per_class_ap[k])}
        return table

    def _computed(self) -> dict[str, Any]:
        if self.result is None:
            self.result = self.metric.compute()
        return self.result


def _defined(value: torch.Tensor) -> float:
    number = float(value)
    return math.nan if number < 0 else number
