"""Images with their boxes drawn: true boxes in green, predicted ones in red with class and score."""

from __future__ import annotations

from typing import Optional

import torch
from torchvision.utils import draw_bounding_boxes, make_grid

from dlrun.detection.targets import scaled, unpad

TRUE_COLOUR, PREDICTED_COLOUR = "lime", "red"
DISPLAY_SCORE = 0.5  # predictions drawn on the TensorBoard images: this score or more


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A (3, H, W) float image in [0, 1] (or a uint8 one) as uint8 pixels on the CPU."""
    image = image.detach().cpu()
    if image.dtype == torch.uint8:
        return image
    return (image.float().clamp(0, 1) * 255).round().to(torch.uint8)


def draw_boxes(image: torch.Tensor, detection: Optional[dict[str, torch.Tensor]], classes: list[str],
               target: Optional[torch.Tensor] = None, min_score: float = 0.0) -> torch.Tensor:
    """`image` (3, H, W) as uint8 with the true objects of `target` (M, 5) and the detections of score
    >= min_score drawn on it; boxes are in fractions of the image, as everywhere in dlrun.detection."""
    picture = to_uint8(image).contiguous()
    height, width = picture.shape[-2:]
    if target is not None:
        boxes, labels = unpad(target.detach().float().cpu())
        if len(boxes):
            picture = draw_bounding_boxes(picture, scaled(boxes, height, width),
                                          [classes[i] for i in labels.tolist()], colors=TRUE_COLOUR)
    if detection is not None:
        shown = detection["scores"].detach().cpu() >= min_score
        boxes = detection["boxes"].detach().float().cpu()[shown]
        names = [f"{classes[int(label)]} {float(score):.2f}"
                 for label, score in zip(detection["labels"].cpu()[shown], detection["scores"].cpu()[shown])]
        if len(boxes):
            picture = draw_bounding_boxes(picture, scaled(boxes, height, width), names, colors=PREDICTED_COLOUR)
    return picture


def boxes_grid(images: torch.Tensor, detections: list[dict[str, torch.Tensor]], classes: list[str],
               targets: torch.Tensor) -> torch.Tensor:
    """One uint8 (3, H, W) picture: the images side by side, with their true boxes and the predicted ones
    scoring DISPLAY_SCORE or more."""
    drawn = [draw_boxes(image, detection, classes, target, DISPLAY_SCORE)
             for image, detection, target in zip(images, detections, targets)]
    return make_grid(torch.stack(drawn), nrow=len(drawn), padding=2)
