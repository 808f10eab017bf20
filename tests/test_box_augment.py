"""Detection augmentation: flips and crops move each box with its pixels; only training batches change."""

from __future__ import annotations

import pytest
import torch

from conftest import compose_config
from dlrun.config import validate
from dlrun.data.augment import AUGMENTS
from dlrun.data.box_augment import BOX_AUGMENTS, build_box_augment
from dlrun.data.build import build_data
from dlrun.detection.targets import pad_target
from dlrun.errors import ConfigError

SIZE = 32


def boxes_drawn(count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Black images, each with one white rectangle at a random pixel box, and targets holding that box."""
    generator = torch.Generator().manual_seed(0)
    images, targets = torch.zeros(count, 3, SIZE, SIZE), []
    for image in images:
        x1, y1 = torch.randint(0, SIZE - 12, (2,), generator=generator).tolist()
        w, h = torch.randint(4, 12, (2,), generator=generator).tolist()
        image[:, y1:y1 + h, x1:x1 + w] = 1.0
        targets.append(pad_target(torch.tensor([[x1, y1, x1 + w, y1 + h]]) / SIZE, torch.tensor([1]), 2))
    return images, torch.stack(targets)


def pixel_box(image: torch.Tensor) -> list[float]:
    """The box, in fractions of the image, around the white pixels of `image`."""
    rows, cols = image[0].nonzero(as_tuple=True)
    return [cols.min() / SIZE, rows.min() / SIZE, (cols.max() + 1) / SIZE, (rows.max() + 1) / SIZE]


def test_every_augment_option_has_a_box_version():
    assert list(BOX_AUGMENTS) == list(AUGMENTS)
    assert build_box_augment("none", [3, SIZE, SIZE]) is None
    with pytest.raises(ConfigError, match="regularization.augment='rotate' is not one of: none, flip, flip_crop"):
        build_box_augment("rotate", [3, SIZE, SIZE])


def test_flip_mirrors_image_and_box_together():
    torch.manual_seed(0)
    images, targets = boxes_drawn()
    out_images, out_targets = build_box_augment("flip", [3, SIZE, SIZE])(images, targets)
    mirrored = 0
    for image, target, original, original_target in zip(out_images, out_targets, images, targets):
        if torch.equal(image, original):
            torch.testing.assert_close(target, original_target)
        else:
            assert torch.equal(image, original.flip(-1))
            x1, y1, x2, y2 = original_target[0, 1:].tolist()
            torch.testing.assert_close(target[0, 1:], torch.tensor([1 - x2, y1, 1 - x1, y2]))
            mirrored += 1
        assert target[1, 0] == -1  # the padding row stays padding
    assert 8 <= mirrored <= 24


def test_crop_moves_each_box_onto_its_pixels_and_drops_boxes_cut_away():
    torch.manual_seed(1)
    images, targets = boxes_drawn(64)
    out_images, out_targets = build_box_augment("flip_crop", [3, SIZE, SIZE])(images, targets)
    assert out_images.shape == images.shape and out_targets.shape == targets.shape
    moved, dropped = 0, 0
    for image, target, original_target in zip(out_images, out_targets, targets):
        if target[0, 0] == -1:  # the rectangle left the picture (or kept under a pixel of it)
            assert image.sum() < 3 * SIZE
            dropped += 1
            continue
        assert target[0, 0] == 1
        torch.testing.assert_close(target[0, 1:], torch.tensor(pixel_box(image)), atol=1e-6, rtol=0)
        moved += not torch.allclose(target, original_target) or 0
    assert moved > 32  # offsets are drawn per example


def test_imagenet_resized_crop_keeps_each_box_around_its_pixels():
    torch.manual_seed(4)
    images, targets = boxes_drawn(64)
    images = images[:, :1].expand(-1, 3, -1, -1).contiguous()  # grey: the same jitter in every channel
    augment = build_box_augment("imagenet", [3, SIZE, SIZE], crop_scale=(0.5, 1.0))
    out_images, out_targets = augment(images, targets)
    assert out_images.shape == images.shape and out_targets.shape == targets.shape
    resized = 0
    for image, target, original_target in zip(out_images, out_targets, targets):
        if target[0, 0] == -1:
            continue
        # Bilinear resizing smears the rectangle's edge by about a pixel.
        torch.testing.assert_close(target[0, 1:], torch.tensor(pixel_box(image - image.amin() > 1e-3)), atol=1.5 / SIZE, rtol=0)
        original_width = original_target[0, 3] - original_target[0, 1]
        resized += not torch.isclose(target[0, 3] - target[0, 1], original_width, atol=1e-3)
    assert resized > 32  # the crop scales the boxes, differently per image


def test_a_box_cropped_away_goes_with_its_label():
    torch.manual_seed(3)
    images = torch.zeros(64, 3, SIZE, SIZE)
    edge, middle = torch.tensor([0.0, 0.25, 2 / SIZE, 0.5]), torch.tensor([0.375, 0.375, 0.625, 0.625])
    targets = pad_target(torch.stack([edge, middle]), torch.tensor([1, 0]), 3).expand(64, -1, -1)
    # zero-padded by 4, cropped at an offset in 0..8: a 2-pixel edge box leaves the picture in about 1/3 of cases
    _, out = build_box_augment("flip_crop", [3, SIZE, SIZE])(images, targets)
    kept = (out[:, :, 0] >= 0).sum(dim=1)
    assert set(kept.tolist()) == {1, 2} and 8 <= (kept == 1).sum() <= 40
    alone = out[kept == 1]
    assert (alone[:, 0, 0] == 0).all() and (alone[:, 1:, 0] == -1).all()  # the middle box, its label, then padding


def test_jitter_changes_pixels_not_boxes_and_channels_last_stays():
    torch.manual_seed(2)
    images, targets = boxes_drawn()
    images = images.contiguous(memory_format=torch.channels_last)
    out_images, _ = build_box_augment("flip_crop_jitter", [3, SIZE, SIZE])(images, targets)
    assert out_images.is_contiguous(memory_format=torch.channels_last)
    assert len({round(v, 4) for v in out_images.amax(dim=(1, 2, 3)).tolist()}) > 10  # brightness per image


def test_only_the_detection_training_loader_augments():
    cfg = validate(compose_config("dataset=synthetic_detection", "model=tiny_ssd", "dataset.image_size=64",
                                  "dataset.num_train=20", "dataset.num_test=4", "regularization.augment=flip_crop",
                                  "trainer.batch_size=8"))
    data = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert data.train.pair_transform is not None
    assert data.val.pair_transform is None and data.test.pair_transform is None
    inputs, targets = next(iter(data.train))
    assert inputs.shape == (8, 3, 64, 64) and inputs.dtype == torch.float32 and targets.shape == (8, 3, 5)
