"""dlrun-export: TorchScript always, ONNX when the dlrun[onnx] extra is installed; the files round-trip."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from conftest import compose_config, read_json
from dataset_files import REPETITIVE_TEXT, write_text
from dlrun.errors import ConfigError
from dlrun.tools.export import ExportMismatch, _check, export_run
from dlrun.tools.loaded_run import load_run
from dlrun.train import run

DLRUN_EXPORT = Path(sys.executable).with_name("dlrun-export")
HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
onnx_extra = pytest.mark.skipif(any(importlib.util.find_spec(name) is None
                                    for name in ("onnx", "onnxscript", "onnxruntime")),
                                reason="the dlrun[onnx] extra is not installed")


def digit_images(count: int = 50) -> torch.Tensor:
    """Real inputs as the digits model sees them: (N, 1, 8, 8) in [0, 1]."""
    return torch.tensor(load_digits().images[:count], dtype=torch.float32).unsqueeze(1) / 16


def reference(run_dir: Path, inputs: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return load_run(run_dir, device="cpu").model(inputs).numpy()


def test_torchscript_round_trip_from_the_cli(digits_run, tmp_path):
    result = subprocess.run([str(DLRUN_EXPORT), str(digits_run), "--format", "torchscript", "--out",
                             str(tmp_path / "exported")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "exported" / "model.pt"
    inputs = digit_images()
    loaded = torch.jit.load(str(path))  # no dlrun needed to run it
    assert np.array_equal(loaded(inputs).detach().numpy(), reference(digits_run, inputs))

    description = read_json(tmp_path / "exported" / "model.pt.json")
    assert description["format"] == "torchscript" and description["file"] == "model.pt"
    assert description["input"] == {"name": "input", "dtype": "float32", "shape": ["batch", 1, 8, 8],
                                    "preprocessing": description["input"]["preprocessing"]}
    assert "pixel values / 255" in description["input"]["preprocessing"]
    assert description["output"]["shape"] == ["batch", 10] and description["classes"] == [str(d) for d in range(10)]
    assert description["check"]["max_abs_difference"] <= 1e-4


@onnx_extra
def test_onnx_round_trip(digits_run, tmp_path):
    import onnxruntime

    path = export_run(digits_run, "onnx", out=tmp_path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = digit_images()  # 50: the batch dimension is free
    outputs = session.run(None, {"input": inputs.numpy()})[0]
    assert np.allclose(outputs, reference(digits_run, inputs), atol=1e-4, rtol=1e-3)
    assert (outputs.argmax(1) == reference(digits_run, inputs).argmax(1)).all()
    assert read_json(tmp_path / "model.onnx.json")["format"] == "onnx"
    assert not list(tmp_path.glob("*.data"))  # the weights are inside the file


def test_language_model_exports_take_any_batch_and_length(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)  # tiny_rnn
    write_text(tmp_path / "text.txt", REPETITIVE_TEXT)
    run(compose_config(f"output_root={tmp_path}", "dataset=text", f"dataset.path={tmp_path / 'text.txt'}",
                       "dataset.num_steps=8", "model=mlp", "model._target_=tiny_rnn.TinyRNN", "debug=smoke"),
        run_dir=tmp_path / "run")
    ids = torch.randint(0, 20, (5, 13))
    expected = reference(tmp_path / "run", ids)
    loaded = torch.jit.load(str(export_run(tmp_path / "run", "torchscript", out=tmp_path / "ts")))
    assert np.allclose(loaded(ids).detach().numpy(), expected, atol=1e-6)
    description = read_json(tmp_path / "ts" / "model.pt.json")
    assert description["input"]["dtype"] == "int64" and description["input"]["shape"] == ["batch", "steps"]
    assert description["vocabulary"]["tokens"][0] == "<unk>"
    if all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime")):
        import onnxruntime

        session = onnxruntime.InferenceSession(str(export_run(tmp_path / "run", "onnx", out=tmp_path / "onnx")))
        assert np.allclose(session.run(None, {"input": ids.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


def test_a_missing_extra_and_a_mismatch_are_errors(digits_run, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    extra = ("onnx", "onnxscript", "onnxruntime")  # all missing, whether or not this machine has them
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in extra else real(name))
    with pytest.raises(ConfigError, match=r"--format onnx needs the optional extra dlrun\[onnx\]: pip install "
                                          r"'dlrun\[onnx\]' \(missing: onnx, onnxscript, onnxruntime\)"):
        export_run(digits_run, "onnx", out=tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ExportMismatch, match="differ from PyTorch's by up to 0.1"):
        _check(np.zeros((3, 2)) + 0.1, np.zeros((3, 2)), tmp_path / "model.onnx")
