"""A trained detection run used: dlrun-eval (mAP reproduced, AP per class, boxes.png), dlrun-predict (a row per
box, images drawn), dlrun-export (TorchScript with the anchors; complete detectors refused in one line)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import compose_config, read_json
from dlrun.data.synthetic_detection import synthetic_detection
from dlrun.detection import detect
from dlrun.errors import ConfigError, DataError
from dlrun.tools.evaluate import evaluate_run
from dlrun.tools.export import export_run
from dlrun.tools.loaded_run import load_run
from dlrun.tools.predict import main as predict
from dlrun.train import run
from test_detection_training import SMALL_SET, SMALL_SSD

DLRUN_PREDICT = Path(sys.executable).with_name("dlrun-predict")


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory) -> Path:
    """TinySSD trained 2 epochs on 96 synthetic 32-pixel images of squares and discs (seconds); shared, read-only."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("detection_run")
    cfg = compose_config(f"output_root={root}", *SMALL_SET, *SMALL_SSD, "dataset.num_classes=2",
                         "dataset.max_objects=2", "dataset.num_train=96", "dataset.num_test=32", "optimizer=adam",
                         "optimizer.lr=0.01", "trainer.batch_size=16", "trainer.epochs=2", "device.num_threads=1")
    run(cfg, run_dir=root / "run")
    torch.set_num_threads(threads)
    return root / "run"


def test_eval_reproduces_the_test_map_with_ap_per_class_and_a_picture(detection_run):
    summary = read_json(detection_run / "summary.json")
    result = evaluate_run(detection_run, [])
    assert result["metrics"] == summary["test"]  # map50 and map included, exactly
    per_class = result["per_class"]
    assert list(per_class) == ["square", "disc"]
    # COCO's mAP is the mean of the classes' APs.
    assert np.mean([scores["ap"] for scores in per_class.values()]) == pytest.approx(summary["test"]["test/map"])
    assert all(0 <= scores["ap"] <= scores["ap50"] <= 1 for scores in per_class.values())
    folder = Path(result["folder"])
    assert read_json(folder / "metrics.json")["per_class"] == per_class
    with Image.open(folder / "boxes.png") as picture:
        assert picture.format == "PNG" and picture.height >= 32 and picture.width > 8 * 32  # 8 images in a row
    events = EventAccumulator(str(folder), size_guidance={"images": 0}).Reload()
    assert "eval/boxes" in events.Tags()["images"]


def test_other_data_has_its_classes_matched_by_name(detection_run):
    other = ["dataset=synthetic_detection", "dataset.image_size=32", "dataset.num_test=16", "dataset.seed=5"]
    result = evaluate_run(detection_run, [*other, "dataset.num_classes=1", "dataset.max_objects=2"], split="test")
    assert list(result["per_class"]) == ["square", "disc"] and np.isnan(result["per_class"]["disc"]["ap"])
    assert result["per_class"]["square"]["ap"] == pytest.approx(result["metrics"]["test/map"])
    with pytest.raises(DataError, match="^the data's classes triangle are not classes of the model; its classes: "
                                        "square, disc$"):
        evaluate_run(detection_run, [*other, "dataset.num_classes=3"])


def write_pngs(root: Path, images: torch.Tensor) -> list[str]:
    """uint8 images (N, 3, H, W) as PNGs, every other one in a sub-folder; their relative paths."""
    paths = []
    for index, image in enumerate(images):
        relative = f"more/{index}.png" if index % 2 else f"{index}.png"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / relative)
        paths.append(relative)
    return paths


def test_predict_writes_a_row_per_box_and_draws_them(detection_run, tmp_path, capsys):
    trained = load_run(detection_run, device="cpu")
    images = synthetic_detection(num_train=6, num_test=1, image_size=32, num_classes=2, seed=11).train.inputs
    paths = write_pngs(tmp_path / "new", images)
    result = subprocess.run([str(DLRUN_PREDICT), str(detection_run), str(tmp_path / "new"), "--min-score", "0.1",
                             "--draw", str(tmp_path / "drawn"), "--out", str(tmp_path / "boxes.csv")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["file", "prediction", "score", "x1", "y1", "x2", "y2"]

    expected = []  # the same images through detect(), boxes scoring 0.1 or more, in the files' sorted order
    for path, found in sorted(zip(paths, detect(trained.model, images.float() / 255))):
        keep = found["scores"] >= 0.1
        for box, score, label in zip(found["boxes"][keep].tolist(), found["scores"][keep].tolist(),
                                     found["labels"][keep].tolist()):
            expected.append((path, ["square", "disc"][label], score, *box))
    assert len(rows) == len(expected) > 0
    for row, (path, name, score, *box) in zip(rows, expected):
        assert (row["file"], row["prediction"]) == (path, name)
        assert [float(row[key]) for key in ("score", "x1", "y1", "x2", "y2")] == pytest.approx([score, *box],
                                                                                             abs=1e-5)
    for path in paths:
        with Image.open(tmp_path / "drawn" / path) as drawn:
            assert drawn.size == (32, 32) and drawn.mode == "RGB"

    predict([str(detection_run), str(tmp_path / "new" / "0.png"), "--min-score", "1", "--out",
             str(tmp_path / "none.csv")])  # one image, no box that sure: the header alone
    assert (tmp_path / "none.csv").read_text().splitlines() == ["file,prediction,score,x1,y1,x2,y2"]

    with pytest.raises(SystemExit) as exit_code:
        predict([str(detection_run), str(tmp_path / "new"), "--min-score", "1.5"])
    assert exit_code.value.code == 2
    assert capsys.readouterr().err == "dlrun-predict: error: --min-score=1.5 is out of range: must be in [0, 1]\n"


def test_torchscript_export_carries_the_anchors_and_complete_detectors_are_refused(detection_run, tmp_path,
                                                                                  monkeypatch):
    path = export_run(detection_run, "torchscript", out=tmp_path / "exported")
    model = load_run(detection_run, device="cpu").model
    inputs = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(torch.jit.load(str(path))(inputs), model(inputs))
    description = read_json(path.with_name("model.pt.json"))
    assert description["classes"] == ["square", "disc"] and description["output"]["shape"] == ["batch", 84, 7]
    torch.testing.assert_close(torch.tensor(description["anchors"]), model.anchors, atol=1e-6, rtol=0)
    assert description["decoding"]["nms_iou"] == 0.5 and description["decoding"]["max_detections"] == 100

    monkeypatch.setattr(type(model), "computes_own_loss", True, raising=False)  # as torchvision's detectors
    with pytest.raises(ConfigError, match=r"^dlrun-export writes models whose output is one tensor; this run's "
                                          r"detector \(TinySSD\) returns boxes, scores and labels per image"):
        export_run(detection_run, "torchscript", out=tmp_path / "refused")
