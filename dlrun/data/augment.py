"""Training-set augmentation as batch-wise tensor operations on the device (`regularization.augment`).

Each operation draws one random choice per example with torch's RNG on the batch's device
(checkpointed with the other RNG states, so a resumed run augments exactly as an
uninterrupted one) and transforms the whole batch at once: no per-example Python loop.
They run on the training loader only, after the resize to the model's input size, for every
dataset. One exception: for image files streamed by workers (`dlrun.data.files`) the random
resized crop of `imagenet` is cut in the workers, from the full-resolution image, and only the
rest of the policy runs here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from dlrun.data.loader import BatchTransform, compose
from dlrun.errors import ConfigError


def random_flip(batch: torch.Tensor) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2."""
    flip = torch.rand(len(batch), 1, 1, 1, device=batch.device) < 0.5
    return torch.where(flip, batch.flip(-1), batch)


def random_crop(batch: torch.Tensor) -> torch.Tensor:
    """Zero-pad by 1/8 of the image size, then cut each image back to its size at a random offset.

    CIFAR's classic "pad 4, crop 32", scaled to any size (28 → pad 3, 224 → pad 28).
    """
    n, _, height, width = batch.shape
    padding = max(1, min(height, width) // 8)
    padded = F.pad(batch, (padding, padding, padding, padding))
    shift_y = torch.randint(0, 2 * padding + 1, (n, 1), device=batch.device)
    shift_x = torch.randint(0, 2 * padding + 1, (n, 1), device=batch.device)
    rows = torch.arange(height, device=batch.device) + shift_y  # (n, height)
    cols = torch.arange(width, device=batch.device) + shift_x  # (n, width)
    examples = torch.arange(n, device=batch.device)[:, None, None]
    # Advanced indices around a slice put their broadcast shape first: (n, height, width, channels).
    cropped = padded[examples, :, rows[:, :, None], cols[:, None, :]]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_jitter(batch: torch.Tensor, strength: float = 0.4) -> torch.Tensor:
    """Scale each image's brightness and contrast by factors drawn from [1 - strength, 1 + strength].

    No clamping, so it works on normalised inputs as well as on [0, 1] pixels.
    """
    factors = 1 + strength * (2 * torch.rand(2, len(batch), 1, 1, 1, device=batch.device) - 1)
    brightened = batch * factors[0]
    mean = brightened.mean(dim=(1, 2, 3), keepdim=True)
    return (brightened - mean) * factors[1] + mean


def random_saturation(batch: torch.Tensor, strength: float = 0.4) -> torch.Tensor:
    """Blend each colour image with its grey version by a factor from [1 - strength, 1 + strength].

    torchvision's ColorJitter saturation (ITU-R 601 luma weights); grey batches are returned as they are.
    """
    if batch.shape[1] != 3:
        return batch
    luma = torch.tensor([0.299, 0.587, 0.114], device=batch.device, dtype=batch.dtype).view(1, 3, 1, 1)
    grey = (batch * luma).sum(dim=1, keepdim=True)
    factor = 1 + strength * (2 * torch.rand(len(batch), 1, 1, 1, device=batch.device) - 1)
    return grey + factor * (batch - grey)


def random_color_jitter(batch: torch.Tensor) -> torch.Tensor:
    """Brightness, contrast and saturation, each by up to ±40 % (the ImageNet recipes' ColorJitter(0.4, 0.4, 0.4))."""
    return random_saturation(random_jitter(batch))


DEFAULT_CROP_SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop default, the ImageNet recipes'
CROP_RATIO = (3 / 4, 4 / 3)  # aspect ratios of the region cut (torchvision's default)


def random_resized_crop(batch: torch.Tensor, scale: Sequence[float] = DEFAULT_CROP_SCALE) -> torch.Tensor:
    """Cut a random region of each image and stretch it back to the image's size (bilinear).

    The region covers a fraction of the area drawn from `scale` and has an aspect ratio drawn
    log-uniformly from CROP_RATIO, as torchvision's RandomResizedCrop: ten tries per image,
    the whole image when none fits. All images at once, through one affine sampling grid each.
    """
    n, _, height, width = batch.shape
    device = batch.device
    tries = 10
    area = scale[0] + (scale[1] - scale[0]) * torch.rand(n, tries, device=device)
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    ratio = torch.exp(log_low + (log_high - log_low) * torch.rand(n, tries, device=device))
    # The region's width and height as fractions of the image's (a pixel area fraction of `area`).
    crop_w = torch.sqrt(area * ratio * height / width)
    crop_h = torch.sqrt(area / ratio * width / height)
    fits = (crop_w <= 1) & (crop_h <= 1)
    first = fits.float().argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    crop_w = torch.where(found, crop_w.gather(1, first).squeeze(1), torch.ones(n, device=device))
    crop_h = torch.where(found, crop_h.gather(1, first).squeeze(1), torch.ones(n, device=device))
    # Centre of the region in grid_sample's coordinates (-1 .. 1 across the image).
    centre_x = (1 - crop_w) * (2 * torch.rand(n, device=device) - 1)
    centre_y = (1 - crop_h) * (2 * torch.rand(n, device=device) - 1)
    theta = torch.zeros(n, 2, 3, device=device, dtype=batch.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = crop_w, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = crop_h, centre_y
    grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
    return F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)


@dataclass(frozen=True)
class Policy:
    """One `regularization.augment` option: an optional random resized crop, then batch operations."""

    operations: tuple[BatchTransform, ...] = ()
    resized_crop: bool = False


AUGMENTS: dict[str, Policy] = {
    "none": Policy(),
    "flip": Policy((random_flip,)),
    "flip_crop": Policy((random_flip, random_crop)),
    "flip_crop_jitter": Policy((random_flip, random_crop, random_jitter)),
    # ImageNet-style: random resized crop (regularization.crop_scale), flip, colour jitter.
    "imagenet": Policy((random_flip, random_color_jitter), resized_crop=True),
}


def build_augment(name: str, input_shape: list[int], crop_scale: Sequence[float] = DEFAULT_CROP_SCALE,
                  crop_in_workers: bool = False) -> Optional[BatchTransform]:
    """The batch transform `regularization.augment=name` asks for; None when there is nothing to do.

    `input_shape` is one example's shape as the model sees it: augmentation needs images (C, H, W).
    With `crop_in_workers` the policy's random resized crop is left to the workers that decode
    the files (see `FileSplit.with_crop`).
    """
    if name not in AUGMENTS:
        raise ConfigError(f"regularization.augment={name!r} is not one of: {', '.join(AUGMENTS)}")
    policy = AUGMENTS[name]
    if not policy.operations and not policy.resized_crop:
        return None
    if len(input_shape) != 3:
        raise ConfigError(f"regularization.augment={name} needs images (C, H, W); "
                          f"this dataset's examples have shape {tuple(input_shape)}")
    scale = (float(crop_scale[0]), float(crop_scale[1]))
    crop = None if crop_in_workers or not policy.resized_crop else (lambda batch: random_resized_crop(batch, scale))
    return compose(crop, *policy.operations)
