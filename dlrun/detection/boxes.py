"""Anchor boxes, matching anchors to objects by IoU, offset encoding, the SSD loss and NMS (d2l 14.4, 14.7).

Every function works on a whole batch at once. Boxes are corners (x1, y1, x2, y2) in fractions of
the image's width and height, so they do not change when a batch is resized. A batch's targets
are one tensor (B, M, 5) whose rows are [class, x1, y1, x2, y2]: up to M objects per image, class
-1 marking the padding rows (see `dlrun.detection.targets`). IoU, box conversions and
non-maximum suppression are torchvision's (`torchvision.ops`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms, box_convert, box_iou

# Offsets are scaled so that they have about unit variance (d2l 14.4.3: 10 for centres, 5 for sizes).
CENTRE_SCALE, SIZE_SCALE = 10.0, 5.0
# Anchors with the highest scores considered per image before NMS (torchvision's SSD keeps 400).
NMS_CANDIDATES = 400


def multibox_prior(feature_size: tuple[int, int], sizes: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on every cell of an (h, w) feature map: (h·w·(len(sizes) + len(ratios) − 1), 4).

    Cells are taken row by row; each cell has every size with the first ratio, then the first
    size with each other ratio (d2l 14.4.1). A size s with ratio r spans s·√r of the image's
    height in width (scaled by h/w, so anchors are square on a square image) and s/√r in height.
    """
    height, width = feature_size
    size = torch.tensor([float(s) for s in sizes])
    root = torch.tensor([float(r) for r in ratios]).sqrt()
    widths = torch.cat([size * root[0], size[0] * root[1:]]) * height / width
    heights = torch.cat([size / root[0], size[0] / root[1:]])
    centre_y, centre_x = torch.meshgrid((torch.arange(height) + 0.5) / height, (torch.arange(width) + 0.5) / width,
                                        indexing="ij")
    per_cell = len(widths)
    centres = torch.stack([centre_x.reshape(-1), centre_y.reshape(-1)], dim=1).repeat_interleave(per_cell, dim=0)
    shapes = torch.stack([widths, heights], dim=1).repeat(height * width, 1)
    return box_convert(torch.cat([centres, shapes], dim=1), "cxcywh", "xyxy")


def match_anchors(anchors: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor,
                  iou_threshold: float = 0.5) -> torch.Tensor:
    """For each image and anchor, the index of the object it is assigned to, or -1 (background).

    `anchors` (A, 4), `boxes` (B, M, 4), `valid` (B, M) marks real objects. An anchor takes the
    object it overlaps most when that IoU reaches `iou_threshold`; first, every object gets the
    anchor it overlaps most, pairs taken greedily from the highest IoU down (d2l 14.4.3), so
    no object is left without an anchor. Runs without reading anything back to the host.
    """
    batch, objects = valid.shape
    iou = box_iou(anchors, boxes.reshape(-1, 4)).reshape(len(anchors), batch, objects).permute(1, 0, 2)
    iou = iou.masked_fill(~valid[:, None, :], -1.0)  # padding rows match nothing
    best_iou, best_object = iou.max(dim=2)
    matched = torch.where(best_iou >= iou_threshold, best_object, -1)
    images = torch.arange(batch, device=anchors.device)
    for _ in range(objects):
        flat = iou.flatten(1).argmax(dim=1)
        anchor, box = flat // objects, flat % objects
        found = iou[images, anchor, box] > 0  # false once an image's objects are all placed
        matched[images, anchor] = torch.where(found, box, matched[images, anchor])
        iou[images, anchor, :] = -1.0
        iou[images, :, box] = -1.0
    return matched


def encode_offsets(anchors: torch.Tensor, boxes: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Offsets (…, 4) of `boxes` from `anchors` (same shape, corners): scaled centre shift and log size ratio."""
    anchor = box_convert(anchors, "xyxy", "cxcywh")
    box = box_convert(boxes, "xyxy", "cxcywh")
    centre = CENTRE_SCALE * (box[..., :2] - anchor[..., :2]) / anchor[..., 2:]
    size = SIZE_SCALE * torch.log(eps + box[..., 2:] / anchor[..., 2:])
    return torch.cat([centre, size], dim=-1)


def decode_offsets(anchors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """The boxes (corners) that `offsets` describe relative to `anchors`: the inverse of encode_offsets."""
    anchor = box_convert(anchors, "xyxy", "cxcywh")
    centre = offsets[..., :2] * anchor[..., 2:] / CENTRE_SCALE + anchor[..., :2]
    size = torch.exp(offsets[..., 2:] / SIZE_SCALE) * anchor[..., 2:]
    return box_convert(torch.cat([centre, size], dim=-1), "cxcywh", "xyxy")


def multibox_target(anchors: torch.Tensor, targets: torch.Tensor,
                    iou_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """What each anchor should predict: class labels (B, A) with 0 = background and c + 1 for object
    class c, box offsets (B, A, 4) and a mask (B, A, 4) that is 1 for anchors assigned an object."""
    valid = targets[..., 0] >= 0
    matched = match_anchors(anchors, targets[..., 1:], valid, iou_threshold)
    positive = matched >= 0
    assigned = torch.gather(targets, 1, matched.clamp(min=0)[..., None].expand(-1, -1, targets.shape[-1]))
    labels = torch.where(positive, assigned[..., 0].long() + 1, 0)
    mask = positive[..., None].expand(-1, -1, 4).to(targets.dtype)
    offsets = encode_offsets(anchors.expand_as(assigned[..., 1:]), assigned[..., 1:]) * mask
    return labels, offsets, mask


def split_predictions(predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An anchor model's output (B, A, C + 1 + 4) as class logits (B, A, C + 1) and box offsets (B, A, 4)."""
    return predictions[..., :-4], predictions[..., -4:]


def multibox_loss(predictions: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every anchor plus smooth-L1 over the offsets of the assigned ones.

    Both are means over all anchors of the batch, as in d2l 14.7.3 (which uses L1; smooth-L1 is
    its suggested refinement, as in the SSD paper).
    """
    class_logits, predicted = split_predictions(predictions.float())
    classes = F.cross_entropy(class_logits.reshape(-1, class_logits.shape[-1]), labels.reshape(-1))
    boxes = F.smooth_l1_loss(predicted * mask, offsets * mask)
    return classes + boxes


def anchor_errors(predictions: torch.Tensor, labels: torch.Tensor, offsets: torch.Tensor,
                  mask: torch.Tensor) -> torch.Tensor:
    """d2l's training measures as sums: [correctly classified anchors, anchors, |offset error|, offset values]."""
    class_logits, predicted = split_predictions(predictions.float())
    correct = (class_logits.argmax(dim=-1) == labels).sum().float()
    absolute = ((offsets - predicted) * mask).abs().sum()
    anchors = labels.new_full((), labels.numel(), dtype=torch.float32)  # a fill, not a host-to-device copy
    values = labels.new_full((), offsets.numel(), dtype=torch.float32)
    return torch.stack([correct, anchors, absolute, values])


def multibox_detection(predictions: torch.Tensor, anchors: torch.Tensor, nms_iou: float = 0.5,
                       score_threshold: float = 0.01, max_detections: int = 100) -> list[dict[str, torch.Tensor]]:
    """Final detections per image: {"boxes" (N, 4) corners in [0, 1], "scores" (N,), "labels" (N,) classes from 0}.

    Each anchor predicts its most likely object class with that probability as its score
    (d2l 14.4.4); per image, the NMS_CANDIDATES best anchors above `score_threshold` go through
    class-wise non-maximum suppression at `nms_iou`, and the best `max_detections` remain.
    """
    class_logits, offsets = split_predictions(predictions.float())
    scores, labels = F.softmax(class_logits, dim=-1)[..., 1:].max(dim=-1)  # (B, A): background left out
    boxes = decode_offsets(anchors, offsets).clamp(0.0, 1.0)
    batch, candidates = scores.shape[0], min(NMS_CANDIDATES, scores.shape[1])
    scores, index = scores.topk(candidates, dim=1)
    labels = labels.gather(1, index)
    boxes = boxes.gather(1, index[..., None].expand(-1, -1, 4))
    images = torch.arange(batch, device=scores.device)[:, None].expand(-1, candidates)
    keep = scores > score_threshold
    scores, labels, boxes, images = scores[keep], labels[keep], boxes[keep], images[keep]
    kept = batched_nms(boxes, scores, images * class_logits.shape[-1] + labels, nms_iou)  # best first
    # Group the survivors by image, keeping their order: a stable sort by image index.
    kept = kept[torch.sort(images[kept], stable=True).indices]
    counts = torch.bincount(images[kept], minlength=batch).tolist()
    detections = []
    for chosen in kept.split(counts):
        chosen = chosen[:max_detections]
        detections.append({"boxes": boxes[chosen], "scores": scores[chosen], "labels": labels[chosen]})
    return detections
