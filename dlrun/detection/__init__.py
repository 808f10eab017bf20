"""Object detection (`task=detection`): boxes, anchors, the SSD loss, NMS, mAP and drawings.

Boxes are corners (x1, y1, x2, y2) in fractions of the image; a batch's targets are one tensor
(B, M, 5) of rows [class, x1, y1, x2, y2] with class -1 padding (`dlrun.detection.targets`).

The task works with two kinds of model:

- **anchor models** (`dlrun.models.tiny_ssd.TinySSD`): `model(images)` returns per-anchor
  predictions (B, A, C + 1 + 4), class logits with background first and then box offsets, for
  the anchors in `model.anchors` (A, 4). The model also carries its settings `match_iou`,
  `nms_iou`, `score_threshold` and `max_detections`. The task matches anchors to objects,
  computes the loss and decodes the predictions (`dlrun.detection.boxes`).
- **complete detectors** (`dlrun.models.torchvision_detection`, `computes_own_loss = True`):
  in training mode `model(images, targets)` returns its loss terms as one tensor; in
  evaluation mode `model(images)` returns its final detections.

`detect` turns either kind's outputs into final boxes, scores and labels.
"""

from __future__ import annotations

import torch
from torch import nn

from dlrun.detection.boxes import multibox_detection


def computes_own_loss(model: nn.Module) -> bool:
    """True for a complete detector (torchvision's), False for an anchor model."""
    return bool(getattr(model, "computes_own_loss", False))


def detect(model: nn.Module, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Final detections for a batch of images (B, C, H, W), prepared as the model sees them.

    One dict per image: "boxes" (N, 4) corners in [0, 1], "scores" (N,), "labels" (N,) class
    indices from 0, best first. Runs in evaluation mode without gradients; the model's mode is
    restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if computes_own_loss(model):
                return model(images)
            return decode(model, model(images))
    finally:
        model.train(was_training)


def decode(model: nn.Module, predictions: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """An anchor model's predictions (B, A, C + 1 + 4) as final detections, with the model's NMS settings."""
    return multibox_detection(predictions, model.anchors, nms_iou=model.nms_iou,
                              score_threshold=model.score_threshold, max_detections=model.max_detections)
