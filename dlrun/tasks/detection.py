"""Object detection: anchor targets and the SSD loss, or a complete detector's own losses; mAP."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig

from dlrun.errors import ConfigError
from dlrun.tasks.base import Task

if TYPE_CHECKING:
    from dlrun.data.build import Data


class Detection(Task):
    """Object detection (dlrun.detection). The best checkpoint has the highest val/map50.

    Targets are (B, M, 5) rows [class, x1, y1, x2, y2]: corners in fractions of the image, class
    -1 for padding. With an anchor model (tiny_ssd) the task matches anchors to objects by IoU;
    the loss is cross-entropy over the anchors' classes plus smooth-L1 over the matched anchors'
    box offsets, and d2l's `class_error` and `bbox_mae` (over anchors) come with it. A complete
    detector (torchvision's) returns its own loss terms when training and no loss when
    evaluating. Evaluation passes decode the detections (NMS) and report mAP@0.5 (`map50`) and
    mAP@[.5:.95] (`map`); `per_class_ap()` then gives each class's AP. After every training
    epoch a few validation images are drawn with their true and predicted boxes.

    dlrun.detection is imported inside the methods: torchvision and torchmetrics take seconds
    to import, and `dlrun --help` reaches this module.
    """

    metric, mode = "map50", "max"
    sample_images = 4  # validation images drawn every epoch

    def __init__(self, classes: list[str], samples: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        self.classes = classes
        self.samples = samples  # (images, targets) drawn with the model's boxes after every epoch
        self.evaluation: Any = None  # an evaluation pass's DetectionMetric; None while training
        self.anchor_model: Optional[torch.nn.Module] = None  # the batch's model when it is an anchor model
        self.matched: tuple[torch.Tensor, ...] = ()  # the batch's anchor labels, offsets and mask
        self.image_size = (1, 1)

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Detection":
        if len(data.val) == 0:
            raise ConfigError("task=detection picks the best epoch by val/map50 and needs a validation split: "
                              "set dataset.val_fraction > 0")
        images, targets = next(iter(data.val))  # evaluation batches: nothing random is drawn
        return cls(list(data.extras["classes"]), (images[:cls.sample_images], targets[:cls.sample_images]))

    def start_pass(self, training: bool) -> None:
        from dlrun.detection.metrics import DetectionMetric

        self.evaluation = None if training else DetectionMetric(self.classes)

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Any:
        from dlrun.detection import computes_own_loss

        self.image_size = tuple(inputs.shape[-2:])
        if computes_own_loss(model):
            self.anchor_model = None
            return model(inputs, targets) if model.training else model(inputs)
        self.anchor_model = model
        return model(inputs)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        from dlrun.detection.boxes import multibox_loss, multibox_target

        if self.anchor_model is None:  # a complete detector: its loss terms, or (evaluating) its detections
            return outputs.sum() if isinstance(outputs, torch.Tensor) else targets.new_zeros((), dtype=torch.float32)
        self.matched = multibox_target(self.anchor_model.anchors, targets.float(), self.anchor_model.match_iou)
        return multibox_loss(outputs, *self.matched)

    def batch_stats(self, outputs: Any, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x images, images with a loss, correct anchors, anchors, |offset error|, offset values].

        On evaluation passes the batch's detections also go into the mAP computation.
        """
        from dlrun.detection import decode
        from dlrun.detection.boxes import anchor_errors

        count = targets.new_full((), len(targets), dtype=torch.float32)  # a fill, not a host-to-device copy
        if self.anchor_model is not None:
            scored, errors = count, anchor_errors(outputs, *self.matched)
            detections = decode(self.anchor_model, outputs) if self.evaluation is not None else None
        else:
            scored = count if isinstance(outputs, torch.Tensor) else count * 0
            errors, detections = count.new_zeros(4), outputs
        if self.evaluation is not None:
            self.evaluation.update(detections, targets, self.image_size)
        return torch.cat([torch.stack([loss.float() * scored, scored]), errors])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, scored, correct, anchors, absolute, values = stats
        result = {"loss": loss_sum / scored} if scored else {}
        if anchors:
            result.update(class_error=1 - correct / anchors, bbox_mae=absolute / values)
        if self.evaluation is not None:
            result.update(self.evaluation.compute())
        return result


    def per_class_ap(self) -> dict[str, dict[str, float]]:
        """Each class's AP ({"ap50", "ap"}) on the last evaluation pass."""
        if self.evaluation is None:
            raise RuntimeError("per_class_ap() reads an evaluation pass; run one first (train.evaluate)")
        return self.evaluation.per_class()

    def epoch_images(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from dlrun.detection import detect
        from dlrun.detection.draw import boxes_grid

        if self.samples is None:
            return {}
        images, targets = self.samples
        return {"val/boxes": boxes_grid(images, detect(model, images), self.classes, targets)}
