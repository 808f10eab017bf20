"""Every detection model trains a step and evaluates through the detection task; TinySSD's anchors fit its
predictions; torchvision's detectors load pretrained weights from the cache or fail in one line offline."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torchvision.models import get_model, get_model_weights

from conftest import compose_config
from dlrun.config import validate
from dlrun.data.synthetic_detection import synthetic_detection
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.models.summary import summarize_model
from dlrun.models.torchvision_detection import DETECTORS, TorchvisionDetector
from dlrun.tasks import Detection

CONF = Path(__file__).parents[1] / "conf"
DETECTION_MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml")
                          if OmegaConf.load(p).get("for_task") == "detection")
# Every option, and every torchvision detector by name.
CASES = [[f"model={name}"] for name in DETECTION_MODELS if name != "torchvision_detection"] + \
    [["model=torchvision_detection", f"model.name={name}"] for name in DETECTORS]
TINY = ["dataset=synthetic_detection", "dataset.image_size=64", "dataset.num_train=4", "dataset.num_test=4"]


def test_the_detection_models_are_the_ones_tested_here():
    assert DETECTION_MODELS == ["tiny_ssd", "torchvision_detection"]


@pytest.mark.parametrize("overrides", CASES, ids=lambda o: o[-1].split("=")[1])
def test_forward_backward_and_evaluation_through_the_task(overrides):
    cfg = validate(compose_config(*TINY, *overrides))
    splits = synthetic_detection(num_train=2, num_test=1, image_size=64, seed=0)
    images, targets = splits.train.inputs.float() / 255, splits.train.targets
    torch.manual_seed(0)
    model = build_model(cfg.model)
    task = Detection(splits.extras["classes"])

    model.train()
    task.start_pass(training=True)
    outputs = task.forward(model, images, targets)
    loss = task.loss(outputs, targets)
    assert loss.dim() == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, parameter in trainable:
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
    train_metrics = task.metrics(task.batch_stats(outputs.detach(), targets, loss.detach()).tolist())
    assert train_metrics["loss"] == pytest.approx(loss.item())

    model.eval()
    task.start_pass(training=False)
    with torch.no_grad():
        outputs = task.forward(model, images, targets)
        stats = task.batch_stats(outputs, targets, task.loss(outputs, targets))
    metrics = task.metrics(stats.tolist())
    assert 0 <= metrics["map50"] <= 1 and 0 <= metrics["map"] <= metrics["map50"]
    assert set(task.per_class_ap()) == {"square", "disc", "triangle"}
    summary = summarize_model(model, images[:1])
    assert summary.total_params == sum(p.numel() for p in model.parameters()) and summary.flops > 0


def test_tiny_ssd_has_an_anchor_for_every_prediction_and_d2l_sizes():
    cfg = validate(compose_config("dataset=synthetic_detection", "model=tiny_ssd"))
    model = build_model(cfg.model)
    # d2l 14.7: 256x256 images give maps of 32, 16, 8, 4 and 1 cells, 4 anchors per cell
    assert model.anchors.shape == ((32 ** 2 + 16 ** 2 + 8 ** 2 + 4 ** 2 + 1) * 4, 4) == (5444, 4)
    assert model(torch.rand(2, 3, 256, 256)).shape == (2, 5444, 3 + 1 + 4)
    assert "anchors" not in model.state_dict()  # derived from the settings, not a weight
    smaller = build_model(validate(compose_config("dataset=synthetic_detection", "model=tiny_ssd",
                                                  "model.ratios=[[1],[1,2],[1,2],[1,2],[1]]",
                                                  "dataset.image_size=64")).model)
    assert smaller.anchors.shape[0] == 8 * 8 * 2 + 4 * 4 * 3 + 2 * 2 * 3 + 1 * 3 + 1 * 2
    with pytest.raises(ConfigError, match=r"input shape \[3, 32, 32\] is too small for TinySSD with 5 scales "
                                          r"\(at least 64x64\); resize the images with dataset.resize"):
        build_model(validate(compose_config("dataset=synthetic_detection", "model=tiny_ssd",
                                            "dataset.image_size=32")).model)


def test_detection_models_and_datasets_go_together():
    with pytest.raises(ConfigError, match="dataset.task=detection needs a detection model; model=LeNet is not one: "
                                          "use one of tiny_ssd, torchvision_detection"):
        validate(compose_config("dataset=synthetic_detection", "model=lenet"))
    with pytest.raises(ConfigError, match=r"model=TinySSD is a detection model but dataset.task is 'classification': "
                                          r"use a detection dataset \(coco_folder, synthetic_detection, voc\)"):
        validate(compose_config("model=tiny_ssd"))


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_detector_loads_the_cache_and_gets_a_new_class_head(torch_home, monkeypatch):
    name = "ssdlite320_mobilenet_v3_large"
    torch.manual_seed(0)
    coco = get_model(name, weights=None, weights_backbone=None)  # COCO's 91 classes
    torch_home.mkdir(parents=True)
    torch.save(coco.state_dict(), torch_home / get_model_weights(name).DEFAULT.url.rsplit("/", 1)[1])
    # The real file passes the hash its name carries; this stand-in would not (tests/test_model_weights.py).
    monkeypatch.setattr("dlrun.models.weights.check_hash", lambda *args: None)

    model = build_model(validate(compose_config(*TINY, "model=torchvision_detection", f"model.name={name}",
                                                "model.pretrained=true")).model)
    torch.testing.assert_close(model.net.backbone.features[0][0][0].weight, coco.backbone.features[0][0][0].weight)
    last_layer = model.net.head.classification_head.module_list[0][-1]
    assert last_layer.out_channels == 6 * (3 + 1)  # 6 anchors per cell, 3 classes + background
    with pytest.raises(ConfigError, match="would overwrite the pretrained weights"):
        build_model(validate(compose_config(*TINY, "model=torchvision_detection", "model.pretrained=true",
                                            "model.init=xavier")).model)


def test_pretrained_detector_offline_fails_in_one_line(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as error:
        build_model(validate(compose_config(*TINY, "model=torchvision_detection",
                                            "model.name=fasterrcnn_mobilenet_v3_large_fpn",
                                            "model.pretrained=true")).model)
    message = str(error.value)
    assert "\n" not in message
    assert "cannot load pretrained weights for fasterrcnn_mobilenet_v3_large_fpn" in message
    assert f"into {torch_home}" in message and "torch.hub.get_dir()" in message


def test_unknown_detector_and_grey_images_are_clear_errors():
    with pytest.raises(ConfigError, match="name 'yolo' is not one of: ssdlite320_mobilenet_v3_large, "
                                          "fasterrcnn_mobilenet_v3_large_fpn, retinanet_resnet50_fpn"):
        build_model(validate(compose_config(*TINY, "model=torchvision_detection", "model.name=yolo")).model)
    with pytest.raises(ValueError, match=r"detectors read RGB images \[3, H, W\], got input_shape \[1, 64, 64\]"):
        TorchvisionDetector([1, 64, 64], num_classes=2)
