"""torchvision's detectors (SSDlite, Faster R-CNN, RetinaNet) in dlrun's detection format."""

from __future__ import annotations

from functools import partial
from typing import Optional

import torch
from torch import nn
from torchvision.models import get_model
from torchvision.models.detection import _utils as detection_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetClassificationHead
from torchvision.models.detection.ssdlite import SSDLiteClassificationHead

from dlrun.detection.targets import scaled, unpad
from dlrun.models.torchvision_model import load_pretrained_weights

# The detectors offered, with the names their constructors give the NMS IoU, score threshold and
# number of detections kept per image.
DETECTORS = {
    "ssdlite320_mobilenet_v3_large": ("nms_thresh", "score_thresh", "detections_per_img"),
    "fasterrcnn_mobilenet_v3_large_fpn": ("box_nms_thresh", "box_score_thresh", "box_detections_per_img"),
    "retinanet_resnet50_fpn": ("nms_thresh", "score_thresh", "detections_per_img"),
}


class TorchvisionDetector(nn.Module):
    """`torchvision.models.detection.<name>` for `num_classes` object classes, a complete detector.

    torchvision's detectors compute their own losses and run their own NMS: in training mode
    `forward(images, targets)` returns the loss terms as one tensor; in evaluation mode
    `forward(images)` returns one {"boxes", "scores", "labels"} dict per image. Boxes go in and
    come out as dlrun's (corners in fractions of the image, classes from 0); torchvision's
    background class 0 is added and removed here. Images are [0, 1] RGB; the detector normalises
    them itself and resizes them to `size` (null: the input size, no resampling).

    `pretrained` loads torchvision's COCO weights from torch's cache (downloading them if needed,
    one line saying where to put them offline) and replaces the class head for `num_classes`.
    """

    computes_own_loss = True

    def __init__(self, input_shape: list[int], num_classes: int, name: str = "ssdlite320_mobilenet_v3_large",
                 pretrained: bool = False, size: Optional[int] = None, nms_iou: float = 0.5,
                 score_threshold: float = 0.01, max_detections: int = 100) -> None:
        super().__init__()
        if name not in DETECTORS:
            raise ValueError(f"name {name!r} is not one of: {', '.join(DETECTORS)}")
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise ValueError(f"torchvision detectors read RGB images [3, H, W], got input_shape {list(input_shape)}")
        self.pretrained = pretrained
        self.num_classes = num_classes
        settings = dict(zip(DETECTORS[name], (nms_iou, score_threshold, max_detections)))
        if pretrained:
            self.net = get_model(name, weights=load_pretrained_weights(name), **settings)
            _replace_class_head(self.net, name, num_classes + 1)
        else:  # no weights at all: weights_backbone would otherwise fetch ImageNet weights
            self.net = get_model(name, weights=None, weights_backbone=None, num_classes=num_classes + 1, **settings)
        side = size or max(input_shape[1:])
        transform = self.net.transform
        transform.min_size, transform.max_size = (side,), side
        if transform.fixed_size is not None:  # SSDlite resizes to a fixed square
            transform.fixed_size = (side, side)

    def forward(self, images: torch.Tensor,
                targets: Optional[torch.Tensor] = None) -> torch.Tensor | list[dict[str, torch.Tensor]]:
        height, width = images.shape[-2:]
        if self.training:
            if targets is None:
                raise ValueError("a torchvision detector in training mode needs the targets")
            losses = self.net(list(images), _torchvision_targets(targets, height, width))
            return torch.stack(list(losses.values()))
        detections = self.net(list(images))
        scale = images.new_tensor([width, height, width, height], dtype=torch.float32)
        return [{"boxes": d["boxes"] / scale, "scores": d["scores"], "labels": d["labels"] - 1} for d in detections]


def _torchvision_targets(targets: torch.Tensor, height: int, width: int) -> list[dict[str, torch.Tensor]]:
    """Padded (B, M, 5) targets as torchvision wants them: pixel boxes of positive size, labels from 1."""
    records = []
    for target in targets:
        boxes, labels = unpad(target.float())
        boxes = scaled(boxes, height, width)
        proper = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # torchvision rejects empty boxes
        records.append({"boxes": boxes[proper], "labels": labels[proper] + 1})
    return records


def _replace_class_head(net: nn.Module, name: str, num_classes: int) -> None:
    """A new, untrained classifier for `num_classes` (background included) in place of COCO's 91."""
    if name.startswith("fasterrcnn"):
        predictor = net.roi_heads.box_predictor
        net.roi_heads.box_predictor = FastRCNNPredictor(predictor.cls_score.in_features, num_classes)
    elif name.startswith("ssdlite"):
        channels = detection_utils.retrieve_out_channels(net.backbone, (320, 320))
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # as ssdlite320_mobilenet_v3_large builds it
        net.head.classification_head = SSDLiteClassificationHead(
            channels, net.anchor_generator.num_anchors_per_location(), num_classes, norm)
    else:  # RetinaNet
        head = net.head.classification_head
        net.head.classification_head = RetinaNetClassificationHead(net.backbone.out_channels, head.num_anchors,
                                                                   num_classes)
