"""Training-set augmentation for detection, where the boxes move with the pixels (`regularization.augment`).

The options mean what they mean for images (dlrun.data.augment): `flip` mirrors left-right
with probability 1/2, `flip_crop` also zero-pads by 1/8 and crops back to the size at a random
offset, `flip_crop_jitter` also scales brightness and contrast, and `imagenet` cuts a random
resized crop (area from `regularization.crop_scale`), flips, and jitters brightness, contrast and
saturation. Flips and crops are
torchvision.transforms.v2 applied per example to the image and its tv_tensors.BoundingBoxes,
so each example draws its own; a box cut to less than a pixel by a crop is dropped with its
label (SanitizeBoundingBoxes). Jitter moves no box: it is dlrun.data.augment's batch-wise
random_jitter (random_color_jitter for `imagenet`). The random numbers come from torch's generators, which checkpoints save.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from dlrun.data.augment import AUGMENTS, CROP_RATIO, DEFAULT_CROP_SCALE, random_color_jitter, random_jitter
from dlrun.data.loader import PairTransform
from dlrun.detection.targets import pad_target, scaled, unpad
from dlrun.errors import ConfigError

# The operations of each `regularization.augment` option (the same names as for images).
BOX_AUGMENTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "flip": ("flip",),
    "flip_crop": ("flip", "crop"),
    "flip_crop_jitter": ("flip", "crop", "jitter"),
    "imagenet": ("resized_crop", "flip", "color_jitter"),
}


class BoxAugment:
    """Augment a batch of images (B, C, H, W) and their padded targets (B, M, 5) together."""

    def __init__(self, geometric: v2.Transform,
                 jitter: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.geometric = geometric
        self.jitter = jitter

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = images.shape[-2:]
        scale = images.new_tensor([width, height, width, height], dtype=torch.float32)
        moved_images, moved_targets = [], []
        for image, target in zip(images, targets):
            boxes, labels = unpad(target)
            sample = self.geometric({
                "image": tv_tensors.Image(image),
                "boxes": tv_tensors.BoundingBoxes(scaled(boxes, height, width), format="XYXY",
                                                  canvas_size=(height, width)),
                "labels": labels,
            })
            moved_images.append(sample["image"].as_subclass(torch.Tensor))
            moved_boxes = sample["boxes"].as_subclass(torch.Tensor) / scale
            moved_targets.append(pad_target(moved_boxes, sample["labels"], targets.shape[1]))
        batch = torch.stack(moved_images)
        if self.jitter is not None:
            batch = self.jitter(batch)
        if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            batch = batch.contiguous(memory_format=torch.channels_last)  # keep the input's memory layout
        return batch, torch.stack(moved_targets).to(targets.dtype)


def build_box_augment(name: str, input_shape: list[int],
                      crop_scale: Sequence[float] = DEFAULT_CROP_SCALE) -> Optional[PairTransform]:
    """The (images, targets) transform `regularization.augment=name` asks for on detection data; None for `none`."""
    if name not in AUGMENTS or name not in BOX_AUGMENTS:
        raise ConfigError(f"regularization.augment={name!r} is not one of: {', '.join(BOX_AUGMENTS)}")
    operations = BOX_AUGMENTS[name]
    if not operations:
        return None
    steps: list[v2.Transform] = []
    height, width = input_shape[1:]
    if "resized_crop" in operations:
        steps.append(v2.RandomResizedCrop((height, width), scale=(float(crop_scale[0]), float(crop_scale[1])),
                                          ratio=CROP_RATIO, antialias=True))
    if "flip" in operations:
        steps.append(v2.RandomHorizontalFlip())
    if "crop" in operations:
        steps.append(v2.RandomCrop((height, width), padding=max(1, min(height, width) // 8)))
    steps.append(v2.SanitizeBoundingBoxes(min_size=1))
    jitter = random_jitter if "jitter" in operations else random_color_jitter if "color_jitter" in operations else None
    return BoxAugment(v2.Compose(steps), jitter)
