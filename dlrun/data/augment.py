"""Training-set augmentation as batch-wise tensor operations on the device (`regularization.augment`).

Each operation draws one random choice per example with torch's RNG on the batch's device
(checkpointed with the other RNG states, so a resumed run augments exactly as an
uninterrupted one) and transforms the whole batch at once: no per-example Python loop.
They run on the training loader only, after the resize to the model's input size.
"""

from __future__ import annotations

from typing import Optional

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


AUGMENTS: dict[str, tuple[BatchTransform, ...]] = {
    "none": (),
    "flip": (random_flip,),
    "flip_crop": (random_flip, random_crop),
    "flip_crop_jitter": (random_flip, random_crop, random_jitter),
}


def build_augment(name: str, input_shape: list[int]) -> Optional[BatchTransform]:
    """The batch transform `regularization.augment=name` asks for; None for `none`.

    `input_shape` is one example's shape as the model sees it: augmentation needs images (C, H, W).
    """
    if name not in AUGMENTS:
        raise ConfigError(f"regularization.augment={name!r} is not one of: {', '.join(AUGMENTS)}")
    operations = AUGMENTS[name]
    if not operations:
        return None
    if len(input_shape) != 3:
        raise ConfigError(f"regularization.augment={name} needs images (C, H, W); "
                          f"this dataset's examples have shape {tuple(input_shape)}")
    return compose(*operations)
