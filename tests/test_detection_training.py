"""task=detection end to end: TinySSD learns the synthetic set, boxes reach TensorBoard, runs resume exactly,
a user's COCO folder trains and predicts, VOC's files are found or asked for, sweeps rank by mAP."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torchvision
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from conftest import compose_config, run_cli
from dataset_files import write_coco_folder, write_voc
from dlrun.config import validate
from dlrun.data.build import build_data, load_splits
from dlrun.data.synthetic_detection import synthetic_detection
from dlrun.detection import detect
from dlrun.detection.draw import draw_boxes
from dlrun.errors import DataError
from dlrun.models import build_model
from dlrun.train import run

# TinySSD at three scales on 32-pixel images with one object each (d2l's banana set, shrunk): a few seconds an epoch.
SMALL_SSD = ["model=tiny_ssd", "model.sizes=[[0.3,0.45],[0.6,0.75],[0.9,0.95]]", "model.base_channels=[8,16,32]",
             "model.channels=32"]
SMALL_SET = ["dataset=synthetic_detection", "dataset.image_size=32", "dataset.num_classes=1", "dataset.max_objects=1",
             "dataset.min_size=0.4", "dataset.max_size=0.8"]


@pytest.fixture(autouse=True)
def one_thread():
    """Runs here set device.num_threads=1 (a network this small gains nothing from more); restored afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_tiny_ssd_learns_to_detect_the_synthetic_objects(cfg_for, tmp_path):
    cfg = cfg_for(*SMALL_SET, *SMALL_SSD, "dataset.num_train=320", "dataset.num_test=64", "optimizer=adam",
                  "optimizer.lr=0.01", "scheduler=onecycle", "trainer.batch_size=16", "trainer.epochs=6",
                  "device.num_threads=1")
    summary = run(cfg, run_dir=tmp_path / "run")
    assert summary["monitor"] == "val/map50" and summary["mode"] == "max"
    assert summary["test"]["test/map50"] >= 0.5, summary["test"]
    assert summary["test"]["test/map"] <= summary["test"]["test/map50"]
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][:-1]
    assert epochs[-1]["train/loss"] < epochs[0]["train/loss"] and epochs[-1]["val/map50"] > epochs[0]["val/map50"]
    assert {"train/class_error", "train/bbox_mae", "val/class_error", "val/bbox_mae", "val/map"} <= set(epochs[0])
    best = max(epochs, key=lambda e: e["val/map50"])
    assert summary["best_epoch"] == best["epoch"] and summary["best_value"] == best["val/map50"]

    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0}).Reload()
    pictures = events.Images("val/boxes")
    assert [p.step for p in pictures] == list(range(1, 7))
    with Image.open(io.BytesIO(pictures[-1].encoded_image_string)) as picture:
        assert picture.mode == "RGB" and picture.width > 4 * 32  # four validation images side by side
    assert "test/map50" in events.Tags()["scalars"]


def test_the_synthetic_set_is_seeded_and_its_boxes_are_valid():
    first = synthetic_detection(num_train=40, num_test=4, image_size=64, num_classes=5, seed=3)
    again = synthetic_detection(num_train=40, num_test=4, image_size=64, num_classes=5, seed=3)
    other = synthetic_detection(num_train=40, num_test=4, image_size=64, num_classes=5, seed=4)
    assert torch.equal(first.train.inputs, again.train.inputs) and torch.equal(first.train.targets, again.train.targets)
    assert not torch.equal(first.train.inputs, other.train.inputs)
    assert first.train.inputs.shape == (40, 3, 64, 64) and first.train.inputs.dtype == torch.uint8
    assert first.extras["classes"] == ["square", "disc", "triangle", "ring", "cross"]
    targets = torch.cat([first.train.targets, first.test.targets])
    real = targets[..., 0] >= 0
    assert ((1 <= real.sum(dim=1)) & (real.sum(dim=1) <= 3)).all()
    assert set(targets[real][:, 0].long().tolist()) == {0, 1, 2, 3, 4}
    boxes = targets[real][:, 1:]
    longer = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert (boxes >= 0).all() and (boxes <= 1).all() and ((0.15 - 1e-6 <= longer) & (longer <= 0.5 + 1e-6)).all()
    with pytest.raises(ValueError, match="num_classes=6: there are 5 shapes"):
        synthetic_detection(num_classes=6)


def test_resuming_a_detection_run_continues_exactly(cfg_for, tmp_path):
    common = [*SMALL_SET, *SMALL_SSD, "dataset.num_train=48", "dataset.num_test=8", "trainer.batch_size=16",
              "regularization.augment=flip_crop_jitter", "optimizer=sgd", "device.num_threads=1"]
    run(cfg_for(*common, "trainer.epochs=2"), run_dir=tmp_path / "straight")
    run(cfg_for(*common, "trainer.epochs=1"), run_dir=tmp_path / "split")
    run(cfg_for(*common, "trainer.epochs=2", f"trainer.resume={tmp_path / 'split'}"), run_dir=tmp_path / "split")
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "split" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_a_coco_folder_trains_one_epoch_and_predicts(cfg_for, tmp_path):
    annotations = write_coco_folder(tmp_path / "coco", images=3)
    dataset = ["dataset=coco_folder", f"dataset.root={tmp_path / 'coco'}", f"dataset.annotations={annotations}",
               "dataset.image_size=64", "dataset.num_workers=0", "dataset.test_fraction=0.34",
               "dataset.val_fraction=0.5"]
    splits = load_splits(validate(compose_config(*dataset, "model=tiny_ssd")).dataset)
    assert splits.extras["classes"] == ["nut", "bolt"]  # category ids 3 and 7, in id order
    first = dict(splits.train.samples + splits.test.samples)[str(tmp_path / "coco" / "images" / "0.jpg")]
    torch.testing.assert_close(first[0], torch.tensor([0.0, 4 / 40, 4 / 32, 16 / 40, 14 / 32]))  # a nut

    cfg = cfg_for(*dataset, "model=tiny_ssd", "debug=smoke", "trainer.batch_size=2", "device.num_threads=1")
    summary = run(cfg, run_dir=tmp_path / "run")
    assert summary["epochs_completed"] == 1 and 0 <= summary["test"]["test/map50"] <= 1

    model = build_model(validate(cfg).model)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"])
    data = build_data(validate(cfg), torch.device("cpu"), torch.Generator().manual_seed(0))
    images, targets = next(iter(data.test))
    detections = detect(model, images)
    assert len(detections) == len(images) and model.training  # detect() puts the model back as it found it
    for found in detections:
        assert found["boxes"].shape[1] == 4 and ((0 <= found["boxes"]) & (found["boxes"] <= 1)).all()
        assert set(found["labels"].tolist()) <= {0, 1} and len(found["labels"]) <= 100
        assert (found["scores"][:-1] >= found["scores"][1:]).all()
    picture = draw_boxes(images[0], detections[0], ["nut", "bolt"], targets[0])
    assert picture.dtype == torch.uint8 and picture.shape == (3, 64, 64)


def test_coco_folder_problems_are_one_line(tmp_path):
    annotations = write_coco_folder(tmp_path / "coco")
    (tmp_path / "coco" / "images" / "1.jpg").unlink()
    with pytest.raises(DataError, match=r"annotations.json lists images not found under .*coco, e.g. images/1.jpg"):
        load_splits(validate(compose_config("dataset=coco_folder", f"dataset.root={tmp_path / 'coco'}",
                                            f"dataset.annotations={annotations}", "model=tiny_ssd")).dataset)
    broken = tmp_path / "broken.json"
    broken.write_text('{"images": []}')
    with pytest.raises(DataError, match=r"broken.json is not a COCO annotation file \(KeyError: 'categories'\)"):
        validate(compose_config("dataset=coco_folder", f"dataset.root={tmp_path / 'coco'}",
                                f"dataset.annotations={broken}", "model=tiny_ssd"))


def test_voc_files_placed_by_hand_are_read(tmp_path):
    write_voc(tmp_path)
    splits = load_splits(validate(compose_config("dataset=voc", f"dataset.root={tmp_path}", "dataset.download=false",
                                                 "model=tiny_ssd")).dataset)
    assert (len(splits.train), len(splits.test)) == (6, 3)  # VOC2012's train and val lists
    assert splits.extras["classes"][11] == "dog" and len(splits.extras["classes"]) == 20
    path, target = splits.train.samples[1]
    assert path.endswith("JPEGImages/2012_000001.jpg")
    torch.testing.assert_close(target, torch.tensor([[11, 3 / 40, 5 / 32, 17 / 40, 17 / 32],
                                                     [14, 20 / 40, 8 / 32, 32 / 40, 24 / 32]]))


def test_missing_voc_files_and_failed_downloads_say_where_to_put_them(tmp_path, monkeypatch):
    folder = tmp_path / "VOCdevkit" / "VOC2007"
    with pytest.raises(DataError) as error:
        load_splits(validate(compose_config("dataset=voc", f"dataset.root={tmp_path}", "dataset.year=2007",
                                            "dataset.download=false", "model=tiny_ssd")).dataset)
    message = str(error.value)
    assert message.startswith(f"VOC2007: files not found; expected Annotations/, JPEGImages/, "
                              f"ImageSets/Main/trainval.txt in {folder}; download them from https://") and \
        "\n" not in message

    def offline(*args, **kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(torchvision.datasets.voc, "download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"VOC2012: download failed \(no network\); expected .* in .*VOC2012; "
                                        r"download them from https://.*VOCtrainval_11-May-2012.tar"):
        load_splits(validate(compose_config("dataset=voc", f"dataset.root={tmp_path}", "model=tiny_ssd")).dataset)


@pytest.mark.slow
def test_a_detection_sweep_ranks_jobs_by_map_with_hparams(tmp_path):
    result = run_cli("-m", *SMALL_SET, *SMALL_SSD, "dataset.num_train=32", "dataset.num_test=8", "debug=smoke",
                     "device.num_threads=1", "optimizer=sgd,adam", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "best val/map50" in result.stdout and "test/map50" in result.stdout
    sweep_dir = next(tmp_path.glob("outputs/multirun/*/*"))
    with open(sweep_dir / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["monitor"] for row in rows] == ["val/map50", "val/map50"]
    assert all(row["status"] == "completed" and row["test_metric"] == "test/map50" for row in rows)
    job_dir = sweep_dir / rows[0]["name"]
    events = EventAccumulator(str(job_dir / "tb")).Reload()
    content = events.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert {"val/best_map50", "test/map50", "test/map"} <= {info.name.tag for info in experiment.metric_infos}

