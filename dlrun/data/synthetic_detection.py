"""A generated object-detection set in the manner of d2l's banana set (14.6), made offline from a seed.

Each image has a textured background (smooth colour blobs, stripes of random angle and
frequency, pixel noise) and one to `max_objects` shapes pasted on it. The shape is the class;
size, aspect ratio, colour and place vary per object, and an object covers at most a fifth of
another, so every box shows most of its object. Boxes are tight around the shapes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import box_area, box_iou

from dlrun.data.splits import DataSplits, TensorSplit
from dlrun.detection.targets import pad_target

SHAPES = ("square", "disc", "triangle", "ring", "cross")  # class names, in class-index order
MAX_COVER = 0.2  # the fraction of a smaller box that a larger one may cover
PLACEMENT_TRIES = 20  # an object that finds no free place in this many tries is left out
CHUNK = 64  # images generated at once (memory: CHUNK x 3 x size² floats)


def synthetic_detection(num_train: int = 1000, num_test: int = 100, image_size: int = 256, num_classes: int = 3,
                        max_objects: int = 3, min_size: float = 0.15, max_size: float = 0.5,
                        seed: int = 0) -> DataSplits:
    """`num_train` + `num_test` RGB images (uint8, image_size²) with targets (N, max_objects, 5).

    Objects per image are drawn from 1..max_objects; an object's longer side is a fraction in
    [min_size, max_size] of the image side. `extras["classes"]` names the shapes used.
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes={num_classes}: there are {len(SHAPES)} shapes ({', '.join(SHAPES)})")
    if num_train < 1 or num_test < 1 or max_objects < 1 or image_size < 8:
        raise ValueError("num_train, num_test and max_objects must be >= 1 and image_size >= 8")
    if not 0 < min_size <= max_size <= 1:
        raise ValueError(f"need 0 < min_size <= max_size <= 1 (got min_size={min_size}, max_size={max_size})")
    generator = torch.Generator().manual_seed(seed)
    total = num_train + num_test
    images, targets = [], []
    for start in range(0, total, CHUNK):
        count = min(CHUNK, total - start)
        pixels = _backgrounds(count, image_size, generator)
        for index in range(count):
            boxes, labels = _paste_objects(pixels[index], num_classes, max_objects, min_size, max_size, generator)
            targets.append(pad_target(boxes, labels, max_objects))
        images.append((pixels.clamp(0, 1) * 255).round().to(torch.uint8))
    images_all, targets_all = torch.cat(images), torch.stack(targets)
    return DataSplits(train=TensorSplit(images_all[:num_train], targets_all[:num_train]),
                      test=TensorSplit(images_all[num_train:], targets_all[num_train:]),
                      extras={"classes": list(SHAPES[:num_classes])})


def _backgrounds(count: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """(count, 3, size, size) floats: colour blobs, plus grey stripes and noise of random strength."""
    blobs = F.interpolate(torch.rand(count, 3, 4, 4, generator=generator), size=(size, size), mode="bilinear",
                          align_corners=False)
    coordinates = (torch.arange(size) + 0.5) / size
    y, x = coordinates[:, None], coordinates[None, :]
    angle = torch.rand(count, 1, 1, generator=generator) * math.pi
    frequency = 4 + 12 * torch.rand(count, 1, 1, generator=generator)
    phase = 2 * math.pi * torch.rand(count, 1, 1, generator=generator)
    strength = 0.2 * torch.rand(count, 1, 1, generator=generator)
    texture = strength * torch.sin(2 * math.pi * frequency * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)
    texture += 0.05 * torch.randn(count, size, size, generator=generator)
    return blobs.mul_(0.7).add_(texture[:, None]).add_(0.15)


def _paste_objects(image: torch.Tensor, num_classes: int, max_objects: int, min_size: float, max_size: float,
                   generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw 1..max_objects shapes into `image` (3, H, W) in place; return their boxes (n, 4) and classes (n,)."""
    size = image.shape[-1]
    wanted = int(torch.randint(1, max_objects + 1, (1,), generator=generator))
    boxes: list[torch.Tensor] = []
    labels: list[int] = []
    for _ in range(wanted):
        box = _free_box(boxes, min_size, max_size, generator)
        if box is None:
            continue
        label = int(torch.randint(0, num_classes, (1,), generator=generator))
        colour = torch.rand(3, 1, 1, generator=generator)
        # Only the pixels under the box are touched: pixel i covers [i, i + 1) / size.
        top, left = int(box[1] * size), int(box[0] * size)
        bottom, right = min(size, math.ceil(box[3] * size)), min(size, math.ceil(box[2] * size))
        y = ((torch.arange(top, bottom) + 0.5) / size)[:, None]
        x = ((torch.arange(left, right) + 0.5) / size)[None, :]
        mask = _shape_mask(SHAPES[label], box, x, y)
        shading = 1 + 0.15 * (y - box[1]) / (box[3] - box[1])  # a little lighter towards the bottom
        window = image[:, top:bottom, left:right]
        window.copy_(torch.where(mask, (colour * shading).clamp(max=1), window))
        boxes.append(box)
        labels.append(label)
    return (torch.stack(boxes) if boxes else torch.zeros(0, 4)), torch.tensor(labels, dtype=torch.long)


def _free_box(placed: list[torch.Tensor], min_size: float, max_size: float,
              generator: torch.Generator) -> torch.Tensor | None:
    """A random box (x1, y1, x2, y2) in the image that covers at most MAX_COVER of each placed box, and is
    covered at most that much by each."""
    for _ in range(PLACEMENT_TRIES):
        side, aspect, left, top = torch.rand(4, generator=generator).tolist()
        longer = min_size + (max_size - min_size) * side
        ratio = 2 ** (2 * aspect - 1)  # width / height in [1/2, 2]
        width, height = (longer, longer / ratio) if ratio >= 1 else (longer * ratio, longer)
        x1, y1 = left * (1 - width), top * (1 - height)
        box = torch.tensor([x1, y1, x1 + width, y1 + height])
        if not placed or _cover(box, torch.stack(placed)).max() <= MAX_COVER:
            return box
    return None


def _cover(box: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Intersection of `box` with each of `others`, over the smaller of the two areas."""
    iou = box_iou(box[None], others)[0]
    areas = box_area(box[None]), box_area(others)
    intersection = iou * (areas[0] + areas[1]) / (1 + iou)  # from IoU = I / (A1 + A2 - I)
    return intersection / torch.minimum(areas[0], areas[1])


def _shape_mask(shape: str, box: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which of the pixels at centres (`y`, `x`) belong to `shape` filling `box`: it touches all four sides."""
    x1, y1, x2, y2 = box.tolist()
    cx, cy, half_w, half_h = (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, (y2 - y1) / 2
    inside = ((x - cx).abs() <= half_w) & ((y - cy).abs() <= half_h)
    ellipse = ((x - cx) / half_w) ** 2 + ((y - cy) / half_h) ** 2
    if shape == "square":
        return inside
    if shape == "disc":
        return ellipse <= 1
    if shape == "triangle":  # apex at the top centre, base along the bottom
        return inside & ((x - cx).abs() <= half_w * (y - y1) / (y2 - y1))
    if shape == "ring":
        return (ellipse <= 1) & (ellipse >= 0.45)
    bar_w, bar_h = (x - cx).abs() <= half_w / 3, (y - cy).abs() <= half_h / 3  # cross: two bars
    return inside & (bar_w | bar_h)
