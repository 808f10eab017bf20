"""`model=torchvision`: any torchvision classifier, new head, adapted first conv, pretrained from the cache."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision

from conftest import compose_config
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.models import build_model


def _build(*overrides: str) -> torch.nn.Module:
    return build_model(validate(compose_config("model=torchvision", *overrides)).model)


def test_head_and_first_conv_fit_the_dataset():
    model = _build("model.name=squeezenet1_1")  # its head is a 1x1 conv, not a Linear
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].in_channels == 1 and convs[-1].out_channels == 10
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 10)


def test_unknown_name_lists_the_choices():
    with pytest.raises(ConfigError, match=r"name 'resnet19' is not a torchvision classification model; one of: .*resnet18"):
        _build("model.name=resnet19")


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_weights_load_from_the_cache_and_the_backbone_freezes(torch_home, monkeypatch):
    reference = torchvision.models.resnet18()
    torch_home.mkdir(parents=True)
    url = torchvision.models.get_model_weights("resnet18").DEFAULT.url
    torch.save(reference.state_dict(), torch_home / url.rsplit("/", 1)[1])
    # The real file passes the hash its name carries; this stand-in would not (tests/test_model_weights.py).
    monkeypatch.setattr("dlrun.models.weights.check_hash", lambda *args: None)

    model = _build("model.pretrained=true", "model.freeze_backbone=true")
    # grey input: the RGB filters are summed, so a grey image gets the same first response
    torch.testing.assert_close(model.net.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.net.layer1[0].conv1.weight, reference.layer1[0].conv1.weight)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"net.fc.weight", "net.fc.bias"}
    # Inputs come in [0, 1]; the pretrained model normalizes them as its weights expect.
    model.eval()
    grey = torch.rand(2, 1, 32, 32)
    expected = model.net((grey - 0.449) / 0.226)
    torch.testing.assert_close(model(grey), expected)
    assert "input_mean" not in model.state_dict()
    with pytest.raises(ConfigError, match="would overwrite the pretrained weights"):
        _build("model.pretrained=true", "model.init=xavier")


def test_pretrained_offline_says_where_torch_caches_weights(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ConfigError) as error:
        _build("model.pretrained=true")
    message = str(error.value)
    assert "\n" not in message
    assert "cannot load pretrained weights for resnet18" in message
    assert f"into {torch_home}" in message and "torch.hub.get_dir()" in message
