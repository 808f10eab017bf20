"""One image file → one uint8 tensor (C, H, W): headers, channel conversion, resizing, random resized crops.

Shared by the decode cache (`dlrun.data.decode_cache`) and the streaming loader
(`dlrun.data.files`), so a cached and a streamed folder hold the same pixels. A file that
cannot be read is returned as a `BadImage` (never raised inside a worker process, where the
error would reach the user as a worker traceback); the caller decides to skip it or to stop
with `bad_image_error`, one line that names the file.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import numpy as np
import torch
from PIL import Image

from dlrun.errors import DataError

if TYPE_CHECKING:  # torchvision takes seconds to import: a run without files or augmentation does without it
    from torchvision.transforms import v2

# Converting a palette image with transparency to RGB is what we want; PIL's advice about it is noise.
warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
# What counts as an image, by file name (torchvision's ImageFolder list); anything else is ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# PIL modes without colour: a folder of only these stays one channel (dataset.channels=auto).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says: its size and whether it has colour."""

    width: int
    height: int
    grey: bool


@dataclass(frozen=True)
class BadImage:
    """A file with an image extension that cannot be read as one, and why."""

    path: str
    reason: str


def is_image_file(name: str) -> bool:
    """An image by its extension, and not hidden (macOS `._x.png` files are not images)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def bad_image_error(image: BadImage) -> DataError:
    """The one line that stops a run at an unreadable image."""
    return DataError(f"cannot read image {image.path} ({image.reason}); fix or remove it, "
                     "or set dataset.skip_bad_files=true to leave such files out")


def read_header(path: str) -> Union[ImageInfo, BadImage]:
    """Size and mode from the file's header alone (no pixels are decoded)."""
    try:
        with Image.open(path) as image:
            return ImageInfo(image.width, image.height, image.mode in GREY_MODES)
    except Exception as error:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError...)
        return BadImage(path, _reason(error))


def decode(path: str, channels: int, size: Optional[tuple[int, int]],
           crop: Optional[v2.RandomResizedCrop] = None, seed: int = 0) -> Union[torch.Tensor, BadImage]:
    """The image at `path` as uint8 (channels, H, W).

    `size` is (height, width) to resize the whole image to (None keeps its own size). With
    `crop` (the training crop of ImageNet-style augmentation, built for the same size), a
    random region is cut and resized instead, drawn from `seed` so that it does not depend
    on which worker process decodes the file.
    """
    try:
        with Image.open(path) as image:
            image = _eight_bit(image).convert("L" if channels == 1 else "RGB")
            if crop is not None:
                with torch.random.fork_rng(devices=[]):  # the worker's own random stream is left alone
                    torch.default_generator.manual_seed(seed)
                    image = crop(image)
            elif size is not None and (image.height, image.width) != tuple(size):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.array(image)  # a writable copy, which torch can share
    except Exception as error:
        return BadImage(path, _reason(error))
    tensor = torch.from_numpy(pixels)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grey (microscopes, scanners) scaled to 8 bits, value / 257; PIL's own conversion clips at 255."""
    if not image.mode.startswith("I"):
        return image
    wide = np.asarray(image, dtype=np.float32) / 257
    return Image.fromarray(wide.clip(0, 255).round().astype(np.uint8), "L")


def _reason(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__
