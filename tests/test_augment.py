"""Batch-wise augmentation: each operation does what it says per example, on training batches only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import compose_config
from dlrun.data import build_data
from dlrun.data.augment import AUGMENTS, build_augment, random_crop, random_flip, random_jitter
from dlrun.errors import ConfigError
from dlrun.schema import validate


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
