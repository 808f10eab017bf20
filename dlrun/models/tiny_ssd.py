"""d2l's TinySSD (14.7): a single-shot multibox detector over multiscale feature maps."""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from dlrun.detection.boxes import multibox_prior
from dlrun.models.layers import conv_relu

Ratios = Union[Sequence[float], Sequence[Sequence[float]]]


def down_sample_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + batch norm + ReLU units, then a 2x2 max-pool: half the height and width."""
    return nn.Sequential(*conv_relu(in_channels, out_channels, True, kernel_size=3, padding=1),
                         *conv_relu(out_channels, out_channels, True, kernel_size=3, padding=1),
                         nn.MaxPool2d(2))


class TinySSD(nn.Module):
    """Feature maps at len(sizes) scales, each with its own anchors and class and box predictors.

    The base network (down-sampling blocks of `base_channels`) gives the first, finest map; each
    further block halves it, with `channels` channels; the last scale is a global max-pool
    (1x1). Every cell of the map at scale i has anchors of `sizes[i]` (fractions of the image)
    and `ratios` (one list for every scale, or one per scale), and two 3x3 conv predictors read
    its features: class logits (background + `num_classes`) and 4 box offsets per anchor.

    `forward(images)` returns (B, A, num_classes + 1 + 4) for the anchors in `self.anchors`
    (A, 4), computed once for the input size (a buffer: it follows the model to its device and
    is not saved in checkpoints). `match_iou` (anchor ↔ object matching), `nms_iou`,
    `score_threshold` and `max_detections` (inference) are read by the detection task.
    """

    computes_own_loss = False

    def __init__(self, input_shape: list[int], num_classes: int,
                 sizes: Sequence[Sequence[float]] = ((0.2, 0.272), (0.37, 0.447), (0.54, 0.619), (0.71, 0.79),
                                                     (0.88, 0.961)),
                 ratios: Ratios = (1.0, 2.0, 0.5), base_channels: Sequence[int] = (16, 32, 64), channels: int = 128,
                 match_iou: float = 0.5, nms_iou: float = 0.5, score_threshold: float = 0.01,
                 max_detections: int = 100) -> None:
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"TinySSD reads images [C, H, W], got input_shape {list(input_shape)}")
        if num_classes < 1 or len(sizes) < 2 or not all(len(s) >= 1 for s in sizes):
            raise ValueError("TinySSD needs num_classes >= 1 and at least 2 scales of anchor sizes")
        per_scale = _ratios_per_scale(ratios, len(sizes))
        self.num_classes = num_classes
        self.sizes = [list(s) for s in sizes]
        self.ratios = per_scale
        self.match_iou, self.nms_iou = match_iou, nms_iou
        self.score_threshold, self.max_detections = score_threshold, max_detections

        widths = [input_shape[0], *base_channels]
        base = nn.Sequential(*(down_sample_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        blocks: list[nn.Module] = [base]
        for scale in range(1, len(sizes) - 1):
            blocks.append(down_sample_block(widths[-1] if scale == 1 else channels, channels))
        blocks.append(nn.AdaptiveMaxPool2d((1, 1)))
        self.blocks = nn.ModuleList(blocks)
        block_channels = [widths[-1]] + [channels] * (len(sizes) - 1)
        anchors_per_cell = [len(s) + len(r) - 1 for s, r in zip(self.sizes, per_scale)]
        scales = list(zip(block_channels, anchors_per_cell))
        self.class_predictors = nn.ModuleList(nn.Conv2d(c, n * (num_classes + 1), kernel_size=3, padding=1)
                                              for c, n in scales)
        self.box_predictors = nn.ModuleList(nn.Conv2d(c, n * 4, kernel_size=3, padding=1) for c, n in scales)
        self.register_buffer("anchors", self._anchors_for(input_shape), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        classes, boxes = [], []
        features = images
        for block, class_predictor, box_predictor in zip(self.blocks, self.class_predictors, self.box_predictors):
            features = block(features)
            classes.append(_per_anchor(class_predictor(features), self.num_classes + 1))
            boxes.append(_per_anchor(box_predictor(features), 4))
        return torch.cat([torch.cat(classes, dim=1), torch.cat(boxes, dim=1)], dim=2)

    def _anchors_for(self, input_shape: list[int]) -> torch.Tensor:
        """The anchors of every scale, in the order the predictions come: a dry run finds each map's size."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                features, shapes = torch.zeros(1, *input_shape), []
                for block in self.blocks:
                    features = block(features)
                    shapes.append(tuple(features.shape[-2:]))
        except RuntimeError as error:
            shapes = [(0, 0)]
            reason = str(error).splitlines()[0]
        finally:
            self.train(was_training)
        if min(min(shape) for shape in shapes) < 1:
            smallest = 2 ** (len(self.blocks) + 1)
            raise ValueError(f"input shape {list(input_shape)} is too small for TinySSD with {len(self.blocks)} "
                             f"scales (at least {smallest}x{smallest}); resize the images with dataset.resize"
                             + (f" ({reason})" if shapes == [(0, 0)] else ""))
        return torch.cat([multibox_prior(shape, sizes, ratios)
                          for shape, sizes, ratios in zip(shapes, self.sizes, self.ratios)])


def _per_anchor(prediction: torch.Tensor, values: int) -> torch.Tensor:
    """(B, anchors·values, H, W) conv output as (B, H·W·anchors, values): cell by cell, as multibox_prior
    orders the anchors."""
    return prediction.permute(0, 2, 3, 1).reshape(prediction.shape[0], -1, values)


def _ratios_per_scale(ratios: Ratios, scales: int) -> list[list[float]]:
    """`ratios` as one list per scale: a flat list applies to every scale."""
    if all(isinstance(r, (int, float)) for r in ratios):
        return [[float(r) for r in ratios]] * scales
    per_scale = [[float(r) for r in scale] for scale in ratios]  # type: ignore[union-attr]
    if len(per_scale) != scales or not all(per_scale):
        raise ValueError(f"ratios: give one list for every scale or {scales} non-empty lists (one per scale of sizes)")
    return per_scale
