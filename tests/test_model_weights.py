"""model.weights: a dlrun checkpoint or a state dict as the starting weights; damaged, mismatched or misnamed
files refused in one line; torchvision's hash checked for files named as it publishes them."""

from __future__ import annotations

import pytest
import torch
import torchvision

from conftest import compose_config
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.tools.loaded_run import load_run
from dlrun.train import run


def _build(*overrides: str) -> torch.nn.Module:
    return build_model(validate(compose_config(*overrides)).model)


def test_a_checkpoint_or_a_state_dict_starts_the_model_and_a_bad_file_is_one_line(digits_run, tmp_path):
    best = digits_run / "checkpoints" / "best.pt"
    trained = torch.load(best, weights_only=True)["model"]
    for source in (best, tmp_path / "state.pt"):
        torch.save(trained, tmp_path / "state.pt")
        model = _build("model=mlp", f"model.weights={source}")
        for name, value in model.state_dict().items():
            torch.testing.assert_close(value, trained[name])

    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(best.read_bytes()[: best.stat().st_size // 2])
    with pytest.raises(ConfigError) as error:
        _build("model=mlp", f"model.weights={damaged}")
    assert str(error.value).startswith(f"model.weights={damaged} cannot be read as PyTorch weights (")
    assert "\n" not in str(error.value)

    with pytest.raises(ConfigError, match=r"does not fit the model \(MLP\): keys 3 of another shape \(net\.1\.weight "
                                          r"\[256, 64\] in the file, \[32, 64\] in the model; net\.1\.bias"):
        _build("model=mlp", "model.hidden=[32]", f"model.weights={best}")
    torch.save(_build("model=lenet").state_dict(), tmp_path / "lenet.pt")  # another architecture's weights
    with pytest.raises(ConfigError, match=r"keys 4 missing \(net\.1\.weight, net\.1\.bias, net\.3\.weight, "
                                          r"net\.3\.bias\), 10 unexpected \("):
        _build("model=mlp", f"model.weights={tmp_path / 'lenet.pt'}")


def test_a_run_starts_from_the_file_and_its_checkpoint_no_longer_needs_it(digits_run, tmp_path, cfg_for):
    start = tmp_path / "start.pt"
    start.write_bytes((digits_run / "checkpoints" / "best.pt").read_bytes())
    summary = run(cfg_for("model=mlp", f"model.weights={start}", "trainer.epochs=1", "optimizer.lr=1e-9"),
                  run_dir=tmp_path / "run")
    assert summary["test"]["test/acc"] > 0.9  # the trained weights, barely moved (from scratch: about 0.1)
    start.unlink()
    assert load_run(tmp_path / "run").model is not None


def test_torchvisions_layout_loads_before_the_head_is_replaced(tmp_path):
    reference = torchvision.models.squeezenet1_1()
    torch.save(reference.state_dict(), tmp_path / "squeezenet.pth")
    model = _build("model=torchvision", "model.name=squeezenet1_1", f"model.weights={tmp_path / 'squeezenet.pth'}")
    torch.testing.assert_close(model.net.features[0].weight, reference.features[0].weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.net.features[3].squeeze.weight, reference.features[3].squeeze.weight)
    assert model.pretrained and model(torch.rand(2, 1, 64, 64)).shape == (2, 10)

    # Under the name torchvision publishes it with, the file must be that file: its hash is checked.
    misnamed = tmp_path / "squeezenet1_1-b8a52dc0.pth"
    misnamed.write_bytes((tmp_path / "squeezenet.pth").read_bytes())
    with pytest.raises(ConfigError, match=r"^model\.weights=.*squeezenet1_1-b8a52dc0\.pth: .* is not the file "
                                          r"torchvision publishes under that name \(its SHA-256 starts [0-9a-f]{8}, "
                                          r"the name says b8a52dc0\); delete it and download it again$"):
        _build("model=torchvision", "model.name=squeezenet1_1", f"model.weights={misnamed}")


def test_a_wrong_file_in_torchs_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet18-f37072fd.pth").write_bytes(b"random weights, not torchvision's")
    with pytest.raises(ConfigError, match=r"model\.pretrained=true \(resnet18\): .* is not the file torchvision "
                                          r"publishes under that name"):
        _build("model=torchvision", "model.pretrained=true")
