"""Image folders: decoded at the model's size, cached, streamed, not augmented unless asked, bad files named."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from conftest import compose_config, run_cli
from dataset_files import write_image_folder, write_leaves
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.data.files import FileLoader
from dlrun.data.image_folder import load_image_folder
from dlrun.data.loader import TensorLoader
from dlrun.errors import ConfigError, DataError
from dlrun.train import run

HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides


def _data(*overrides: str):
    """The folder's splits as decoded (uint8): without the float copy device.float_cache_mb makes of them
    (tests/test_speed_paths.py shows that copy gives the same batches)."""
    cfg = validate(compose_config("dataset=image_folder", "model=lenet", "dataset.num_workers=0",
                                  "device.float_cache_mb=0", *overrides))
    return cfg, build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))


def _write_digits(root: Path, size: int = 28) -> np.ndarray:
    """scikit-learn's digits upscaled to `size` px as <label>/<index>.png; returns the images in the folder's order."""
    digits = load_digits()
    pixels = (digits.images * (255 / 16)).round().astype(np.uint8)
    order = np.argsort(digits.target, kind="stable")  # the folder lists class by class, files by name
    images = []
    for index in order:
        image = Image.fromarray(pixels[index]).resize((size, size), Image.Resampling.BILINEAR)
        (root / str(digits.target[index])).mkdir(parents=True, exist_ok=True)
        image.save(root / str(digits.target[index]) / f"{index:04d}.png")
        images.append(np.asarray(image))
    np.savez(root.parent / "digits.npz", images=np.stack(images)[:, None], labels=digits.target[order])
    return np.stack(images)


def _write_grey_folder(root: Path, per_class: int = 6, size: int = 20) -> None:
    rng = np.random.default_rng(0)
    for label, name in enumerate(("a", "b")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            Image.fromarray((rng.integers(0, 120, (size, size)) + 120 * label).astype(np.uint8)).save(
                root / name / f"{n}.png")


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_the_same_images_as_a_folder_and_as_arrays_reach_the_same_test_accuracy(cache, tmp_path, cfg_for,
                                                                               monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)  # array_images
    _write_digits(tmp_path / "digits", size=16)
    common = ("model=lenet", "model.batch_norm=true", "dataset.resize=16", "optimizer=adam", "optimizer.lr=0.01",
              "trainer.epochs=3", "trainer.batch_size=64", "device.num_threads=1", "seed=0")
    arrays = run(cfg_for("dataset=digits", "dataset._target_=array_images.load_arrays",
                         f"+dataset.path={tmp_path / 'digits.npz'}", *common), run_dir=tmp_path / "arrays")
    folder = run(cfg_for("dataset=image_folder", f"dataset.root={tmp_path / 'digits'}", f"dataset.cache={cache}",
                         "dataset.num_workers=0", *common), run_dir=tmp_path / "folder")
    assert arrays["test"]["test/acc"] > 0.9
    assert abs(folder["test"]["test/acc"] - arrays["test"]["test/acc"]) <= 0.01


def test_batches_are_the_decoded_pixels_at_the_model_size_cached_or_streamed(tmp_path):
    write_image_folder(tmp_path, classes=("cat", "dog", "owl"), per_class=10)  # 12x12 colour images
    cached_cfg, cached = _data(f"dataset.root={tmp_path}", "trainer.batch_size=4")
    _, streamed = _data(f"dataset.root={tmp_path}", "trainer.batch_size=4", "dataset.cache=none",
                        "dataset.num_workers=2")
    assert cached_cfg.dataset.num_outputs == 3 and list(cached_cfg.dataset.input_shape) == [3, 28, 28]
    assert isinstance(cached.train, TensorLoader) and isinstance(streamed.train, FileLoader)
    assert cached.train.split.inputs.dtype == torch.uint8 and cached.train.split.inputs.shape[1:] == (3, 28, 28)
    assert cached.extras["classes"] == streamed.extras["classes"] == ["cat", "dog", "owl"]
    assert [len(d.train.split) for d in (cached, streamed)] == [22, 22]
    for name in ("train", "val", "test"):  # the same split, the same order, the same pixels
        expected = torch.cat([inputs for inputs, _ in getattr(cached, name)])
        got = torch.cat([inputs for inputs, _ in getattr(streamed, name)])
        assert got.shape[1:] == (3, 28, 28) and torch.equal(got, expected)
    first = Image.open(streamed.test.split.samples[0][0]).convert("RGB").resize((28, 28), Image.Resampling.BILINEAR)
    torch.testing.assert_close(next(iter(cached.test))[0][0], torch.from_numpy(np.array(first)).permute(2, 0, 1) / 255)


def test_an_unchanged_folder_reuses_the_cache_and_a_changed_one_is_decoded_again(tmp_path, caplog):
    _write_grey_folder(tmp_path / "images")
    caplog.set_level(logging.INFO, logger="dlrun")

    def load():
        caplog.clear()
        splits = load_image_folder(str(tmp_path / "images"), decode_size=20, test_fraction=0.5, num_workers=0)
        decoded = any("dataset: decoded" in message for message in caplog.messages)
        return torch.cat([splits.train.inputs, splits.test.inputs]), decoded

    first, decoded = load()
    assert decoded and first.shape == (12, 1, 20, 20)
    again, decoded = load()
    assert not decoded and torch.equal(again, first)
    assert any("reused decode cache" in message for message in caplog.messages)

    changed = tmp_path / "images" / "a" / "0.png"
    Image.fromarray(np.full((20, 20), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new modification time even on coarse file systems
    after_edit, decoded = load()
    assert decoded and (after_edit == 7).all(dim=(1, 2, 3)).sum() == 1
    Image.fromarray(np.zeros((20, 20), dtype=np.uint8)).save(tmp_path / "images" / "b" / "new.png")
    after_add, decoded = load()
    assert decoded and after_add.shape == (13, 1, 20, 20)


def test_a_damaged_cache_file_is_decoded_again(tmp_path, decode_cache_in_tmp):
    _write_grey_folder(tmp_path / "images")
    first = load_image_folder(str(tmp_path / "images"), decode_size=20, num_workers=0)
    for file in decode_cache_in_tmp.glob("*.pt"):
        file.write_bytes(file.read_bytes()[:100])
    again = load_image_folder(str(tmp_path / "images"), decode_size=20, num_workers=0)
    assert torch.equal(again.train.inputs, first.train.inputs)


def test_grey_stays_one_channel_and_channels_can_be_forced(tmp_path):
    _write_grey_folder(tmp_path)
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.resize=null")
    assert list(cfg.dataset.input_shape) == [1, 20, 20] and next(iter(data.train))[0].shape[1:] == (1, 20, 20)
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.channels=3", "dataset.cache=none")
    assert list(cfg.dataset.input_shape) == [3, 28, 28] and next(iter(data.train))[0].shape[1:] == (3, 28, 28)
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(tmp_path / "a" / "colour.png")
    cfg = validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}"))
    assert list(cfg.dataset.input_shape) == [3, 28, 28]
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.channels=1")
    assert list(cfg.dataset.input_shape) == [1, 28, 28] and next(iter(data.train))[0].shape[1:] == (1, 28, 28)
    with pytest.raises(ConfigError, match=r"dataset.channels=2 is not one of: auto, 1, 3"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.channels=2"))


def test_sixteen_bit_grey_images_keep_their_range(tmp_path):
    wide = (np.arange(20 * 20).reshape(20, 20) * 160).astype(np.uint16)  # 0 .. 63,840
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for n in range(3):
            Image.fromarray(wide).save(tmp_path / name / f"{n}.png")
    assert Image.open(tmp_path / "a" / "0.png").mode == "I;16"
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.resize=null")
    assert list(cfg.dataset.input_shape) == [1, 20, 20]
    pixels = data.train.split.inputs[0, 0].int()
    assert (pixels - torch.from_numpy(wide / 257).round().int()).abs().max() == 0  # scaled, not clipped at 255


def test_sizes_follow_the_model_or_the_images(tmp_path):
    _write_grey_folder(tmp_path)
    cfg = validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}", "model=resnet"))
    assert list(cfg.dataset.input_shape) == [1, 96, 96]  # ResNet's design size, not a fixed 224
    Image.fromarray(np.zeros((30, 24), dtype=np.uint8)).save(tmp_path / "a" / "odd.png")
    with pytest.raises(DataError, match=r"the images differ in size \(20x20, 30x24\) .*set dataset.resize=<pixels>"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resize=null"))


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_augmentation_comes_only_from_regularization_augment(cache, tmp_path):
    write_image_folder(tmp_path, per_class=16)
    folder = (f"dataset.root={tmp_path}", f"dataset.cache={cache}", "trainer.batch_size=32", "dataset.val_fraction=0")
    _, plain = _data(*folder)
    _, augmented = _data(*folder, "regularization.augment=imagenet", "regularization.crop_scale=[0.2,0.5]")
    plain_batch, plain_labels = next(iter(plain.train))
    augmented_batch, augmented_labels = next(iter(augmented.train))
    assert torch.equal(plain_labels, augmented_labels)  # the same images, in the same order
    evaluated = torch.cat([inputs for inputs, _ in plain.test])
    assert torch.equal(torch.cat([inputs for inputs, _ in augmented.test]), evaluated)  # evaluation: whole images
    decoded = plain.train.split.inputs if cache == "auto" else None
    if decoded is not None:  # not augmented: the training batch is the decoded images themselves
        order = torch.randperm(len(decoded), generator=torch.Generator().manual_seed(0))[:32]
        assert torch.equal(plain_batch, decoded[order].float() / 255)
    else:
        assert plain.train.split.crop_scale is None and augmented.train.split.crop_scale == (0.2, 0.5)
    assert augmented_batch.shape == plain_batch.shape
    assert not torch.allclose(augmented_batch, plain_batch, atol=0.05)


def test_a_corrupt_image_is_named_in_one_line_or_skipped(tmp_path, caplog):
    _write_grey_folder(tmp_path)
    broken = tmp_path / "a" / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match=r"^cannot read image .*a/broken.png \(UnidentifiedImageError: .*\); "
                                        r"fix or remove it, or set dataset.skip_bad_files=true") as error:
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}"))
    assert "\n" not in str(error.value)
    broken.unlink()
    whole = (tmp_path / "b" / "0.png").read_bytes()
    (tmp_path / "b" / "truncated.png").write_bytes(whole[:len(whole) // 2])
    for cache in ("auto", "none"):  # its header reads fine: decoding finds it
        with pytest.raises(DataError, match=r"cannot read image .*b/truncated.png \(OSError: .*truncated"):
            _, data = _data(f"dataset.root={tmp_path}", f"dataset.cache={cache}", "trainer.batch_size=32",
                            "dataset.val_fraction=0", "dataset.test_fraction=0.1")
            list(data.train)
    broken.write_bytes(b"\x89PNG not really")
    caplog.set_level(logging.INFO, logger="dlrun")
    _, data = _data(f"dataset.root={tmp_path}", "dataset.skip_bad_files=true", "dataset.val_fraction=0")
    assert len(data.train.split) + len(data.test.split) == 12
    assert any("left out 2 of 14 images that cannot be read" in message for message in caplog.messages)
    _, data = _data(f"dataset.root={tmp_path}", "dataset.skip_bad_files=true", "dataset.cache=none",
                    "dataset.val_fraction=0", "trainer.batch_size=64")
    assert any("left out 1 of 14 images" in message for message in caplog.messages)  # broken.png, by its header
    assert sum(len(targets) for loader in (data.train, data.test) for _, targets in loader) == 12
    assert any("skipped 1 unreadable image(s)" in message for message in caplog.messages)  # truncated.png


def test_the_cli_names_a_corrupt_image_in_one_line_and_exits_2(tmp_path):
    _write_grey_folder(tmp_path / "images")
    (tmp_path / "images" / "b" / "3.png").write_bytes(b"GIF89a broken")
    result = run_cli("dataset=image_folder", f"dataset.root={tmp_path / 'images'}", cwd=tmp_path, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f"dlrun: error: cannot read image {tmp_path / 'images' / 'b' / '3.png'} (")


def test_streamed_crops_do_not_depend_on_the_number_of_workers(tmp_path):
    write_image_folder(tmp_path, per_class=16)
    batches = []
    for workers in (0, 2):
        _, data = _data(f"dataset.root={tmp_path}", "dataset.cache=none", f"dataset.num_workers={workers}",
                        "regularization.augment=imagenet", "trainer.batch_size=8")
        torch.manual_seed(0)
        batches.append([inputs for _, (inputs, _) in zip(range(2), data.train)])
    assert all(torch.equal(a, b) for a, b in zip(*batches))


def test_non_images_are_ignored_and_an_empty_class_folder_is_named(tmp_path):
    _write_grey_folder(tmp_path)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "._0.png").write_bytes(b"macOS metadata")
    (tmp_path / ".ipynb_checkpoints").mkdir()
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.val_fraction=0")
    assert cfg.dataset.num_outputs == 2 and len(data.train.split) + len(data.test.split) == 12
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "readme.md").write_text("nothing here")
    with pytest.raises(DataError, match=r"class folder c holds no images \(.jpg, .jpeg, .png.*\); add images"):
        validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}"))


def test_the_cache_budget_decides_memory_or_streaming(tmp_path):
    write_image_folder(tmp_path)
    _, data = _data(f"dataset.root={tmp_path}", "dataset.cache_max_gb=1e-6")  # 16 images x 3x28x28 > 1 kB
    assert isinstance(data.train, FileLoader) and data.train.split.num_workers == 0
    _, data = _data(f"dataset.root={tmp_path}", "dataset.cache_max_gb=1e-6", "dataset.cache=memory")
    assert isinstance(data.train, TensorLoader)
    with pytest.raises(ConfigError, match=r"dataset.cache='disk' is not one of: auto, memory, none"):
        _data(f"dataset.root={tmp_path}", "dataset.cache=disk")
    with pytest.raises(ConfigError, match=r"dataset.cache_max_gb=0 is out of range: must be > 0 or null"):
        _data(f"dataset.root={tmp_path}", "dataset.cache_max_gb=0")


@pytest.mark.parametrize("cache", ["auto", "none"])
def test_classify_leaves_csv_layout(cache, tmp_path):
    write_leaves(tmp_path)  # 10x14 colour images listed in train.csv
    cfg, data = _data(f"dataset.root={tmp_path}", "dataset.labels_csv=train.csv", f"dataset.cache={cache}",
                      "dataset.resize=12")
    assert cfg.dataset.num_outputs == 3 and data.extras["classes"] == ["acer", "betula", "quercus"]
    inputs, targets = next(iter(data.test))
    assert inputs.shape[1:] == (3, 12, 12) and set(targets.tolist()) <= {0, 1, 2}
