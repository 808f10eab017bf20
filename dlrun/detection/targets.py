"""Detection targets as one tensor per batch, so they batch and move like any other target.

An image's objects are rows [class, x1, y1, x2, y2] (class from 0, corners in fractions of the
image), padded to a fixed number of rows with class PADDING and zero boxes. A batch is then a
(B, M, 5) tensor: it can live on the training device and be indexed by the fast `TensorLoader`,
or be collated by a `DataLoader` without a custom collate function.
"""

from __future__ import annotations

import torch

PADDING = -1  # the class of a row that holds no object


def pad_target(boxes: torch.Tensor, labels: torch.Tensor, max_objects: int) -> torch.Tensor:
    """One image's `boxes` (n, 4) and `labels` (n,) as (max_objects, 5) rows; n must not exceed max_objects."""
    if len(boxes) > max_objects:
        raise ValueError(f"{len(boxes)} objects in an image, more than max_objects={max_objects}")
    rows = torch.zeros(max_objects, 5, dtype=torch.float32, device=boxes.device)
    rows[:, 0] = PADDING
    rows[:len(boxes), 0] = labels.float()
    rows[:len(boxes), 1:] = boxes.float()
    return rows


def unpad(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One image's (M, 5) rows back to its `boxes` (n, 4) and integer `labels` (n,)."""
    objects = target[target[:, 0] != PADDING]
    return objects[:, 1:], objects[:, 0].long()


def to_records(targets: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """A batch (B, M, 5) as one {"boxes", "labels"} dict per image (torchvision's and torchmetrics' layout)."""
    records = []
    for target in targets:
        boxes, labels = unpad(target)
        records.append({"boxes": boxes, "labels": labels})
    return records


def scaled(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes in fractions of the image as pixel coordinates of a `height` x `width` image."""
    return boxes * boxes.new_tensor([width, height, width, height])
