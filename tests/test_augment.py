"""Batch-wise augmentation: each operation does what it says per example, on training batches only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from dlrun.config import validate
from dlrun.data.augment import (AUGMENTS, CROP_RATIO, build_augment, random_crop, random_flip, random_jitter,
                                random_resized_crop, random_saturation)
from dlrun.data.build import build_data
from dlrun.errors import ConfigError


@pytest.fixture
def images() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(64, 3, 16, 16)


def test_flip_mirrors_about_half_of_the_images(images):
    out = random_flip(images)
    mirrored = torch.tensor([torch.equal(o, x.flip(-1)) for o, x in zip(out, images)])
    kept = torch.tensor([torch.equal(o, x) for o, x in zip(out, images)])
    assert (mirrored ^ kept).all()  # every image is one or the other
    assert 16 <= mirrored.sum() <= 48


def test_crop_is_a_shifted_window_of_the_zero_padded_image(images):
    out = random_crop(images)
    assert out.shape == images.shape
    padded = F.pad(images, (2, 2, 2, 2))  # 16 // 8 = 2
    offsets = set()
    for o, p in zip(out, padded):
        matches = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(o, p[:, dy:dy + 16, dx:dx + 16])]
        assert matches, "an output is no window of its padded input"
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets are drawn per example


def test_jitter_is_an_affine_change_per_image(images):
    out = random_jitter(images)
    assert out.shape == images.shape
    for o, x in zip(out, images):  # o = a·x + b for one (a, b) per image
        design = torch.stack([x.flatten(), torch.ones(x.numel())], dim=1)
        solution = torch.linalg.lstsq(design, o.flatten()[:, None]).solution
        torch.testing.assert_close(design @ solution, o.flatten()[:, None], atol=1e-5, rtol=0)
        assert 0.6 * 0.6 - 1e-6 <= solution[0].item() <= 1.4 * 1.4 + 1e-6
    assert not torch.allclose(out, images)


def _coordinates(n: int, height: int, width: int) -> torch.Tensor:
    """Images whose channel 0 is each pixel centre's x and channel 1 its y, in grid_sample's -1..1 units."""
    xs = (2 * torch.arange(width) + 1) / width - 1
    ys = (2 * torch.arange(height) + 1) / height - 1
    grid = torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)])
    return grid.expand(n, 2, height, width).contiguous()


@pytest.mark.parametrize("scale", [(0.08, 1.0), (0.3, 0.3)])
def test_resized_crop_cuts_a_region_of_the_drawn_area_and_ratio(scale):
    torch.manual_seed(0)
    height, width = 48, 64
    out = random_resized_crop(_coordinates(200, height, width), scale)
    assert out.shape == (200, 2, height, width)
    # Sampling a linear ramp bilinearly gives the ramp back: the corners tell the region.
    half_w = (out[:, 0, 0, -1] - out[:, 0, 0, 0]) / (2 * (1 - 1 / width))  # fraction of the width
    half_h = (out[:, 1, -1, 0] - out[:, 1, 0, 0]) / (2 * (1 - 1 / height))
    tolerance = 2 / min(height, width)  # a region touching the border loses up to half a pixel
    area, ratio = half_w * half_h, (half_w * width) / (half_h * height)
    assert (area >= scale[0] - 2 * tolerance).all() and (area <= scale[1] + tolerance).all()
    assert (ratio >= CROP_RATIO[0] - 4 * tolerance).all() and (ratio <= CROP_RATIO[1] + 4 * tolerance).all()
    assert area.std() > 0.1 if scale[0] != scale[1] else area.std() < 0.01  # drawn per image
    centres = (out[:, 0, 0, -1] + out[:, 0, 0, 0]) / 2
    assert centres.std() > 0.05  # positions drawn per image too


def test_resized_crop_of_the_whole_image_keeps_it():
    images = torch.rand(8, 3, 16, 16)
    torch.testing.assert_close(random_resized_crop(images, (1.0, 1.0)), images)  # no region but the whole fits


def test_saturation_keeps_grey_images_and_each_pixel_luma():
    torch.manual_seed(0)
    grey = torch.rand(4, 1, 8, 8)
    assert torch.equal(random_saturation(grey), grey)
    colour = torch.rand(64, 3, 8, 8)
    out = random_saturation(colour)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((out * luma).sum(1), (colour * luma).sum(1))
    assert not torch.allclose(out, colour)


def test_imagenet_policy_crops_on_the_device_unless_the_workers_do():
    torch.manual_seed(0)
    images = torch.rand(32, 3, 16, 16)
    on_device = build_augment("imagenet", [3, 16, 16], crop_scale=(0.1, 0.1))
    in_workers = build_augment("imagenet", [3, 16, 16], crop_scale=(0.1, 0.1), crop_in_workers=True)
    flipped_jittered = in_workers(images)
    cropped = on_device(images)
    # A 10 % region stretched to the whole image is smooth: neighbouring pixels differ far less;
    # flips and colour changes leave noise as rough as it was.
    roughness = lambda batch: (batch[..., 1:] - batch[..., :-1]).abs().mean()
    assert roughness(cropped) < 0.5 * roughness(images)
    assert roughness(flipped_jittered) > 0.5 * roughness(images)


@pytest.mark.parametrize("scale", ["[0,1]", "[0.5,0.2]", "[0.1,1.5]", "[0.5]"])
def test_crop_scale_out_of_range_is_one_line(scale):
    with pytest.raises(ConfigError, match=r"regularization.crop_scale=.* is out of range: must be \[min, max\]"):
        validate(compose_config(f"regularization.crop_scale={scale}"))


@pytest.mark.parametrize("name", list(AUGMENTS))
def test_every_augment_keeps_shape_and_dtype(name, images):
    transform = build_augment(name, list(images.shape[1:]))
    if name == "none":
        assert transform is None
    else:
        out = transform(images)
        assert out.shape == images.shape and out.dtype == images.dtype


def test_augmenting_non_images_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"regularization.augment=flip needs images \(C, H, W\); .* \(200,\)"):
        build_augment("flip", [200])


def test_only_the_training_loader_is_augmented():
    cfg = validate(compose_config("model=lenet", "regularization.augment=flip_crop_jitter", "trainer.batch_size=16"))
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    raw = data.train.split.inputs[:16]
    resized = F.interpolate(raw, size=(28, 28), mode="bilinear", align_corners=False)
    augmented = data.train.transform(raw)
    assert augmented.shape == (16, 1, 28, 28) and not torch.allclose(augmented, resized)
    for loader in (data.val, data.test):
        first, second = next(iter(loader))[0], next(iter(loader))[0]
        assert torch.equal(first, second)
        expected = F.interpolate(loader.split.inputs[:16], size=(28, 28), mode="bilinear", align_corners=False)
        assert torch.equal(first, expected)
