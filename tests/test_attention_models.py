"""The attention models (d2l 11): ViT and the Transformer train on tiny data, their attention is counted in the
model table, the language model continues a text by its state, and trained runs evaluate, predict and export."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_json
from dataset_files import REPETITIVE_TEXT, write_text
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.models import build_model
from dlrun.models.summary import summarize_model
from dlrun.models.transformer import Transformer
from dlrun.tools.evaluate import evaluate_run
from dlrun.tools.export import export_run
from dlrun.tools.loaded_run import load_run
from dlrun.tools.outputs import OutputOptions
from dlrun.tools.predict import main as predict
from dlrun.train import run

# A ViT of 2x2 patches on the 8x8 digits, 32 dimensions, one block of 2 heads: seconds to train.
# One thread: on a busy 2-core machine PyTorch's two threads wait on each other (test_sequence_recipes.py).
TINY_VIT = ["device.num_threads=1", "model=vit", "dataset.resize=null", "model.patch_size=2", "model.hidden_size=32",
            "model.mlp_size=64", "model.num_heads=2", "model.num_layers=1"]
TINY_LM = ["device.num_threads=1", "model=transformer", "model.hidden_size=32", "model.mlp_size=64", "model.num_heads=2",
           "model.num_layers=1"]
onnx_extra = pytest.mark.skipif(any(importlib.util.find_spec(name) is None
                                    for name in ("onnx", "onnxscript", "onnxruntime")),
                                reason="the dlrun[onnx] extra is not installed")


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    """A tiny ViT trained 4 epochs on the bundled digits (test accuracy 0.77 on seed 0); shared, read-only."""
    from conftest import compose_config

    root = tmp_path_factory.mktemp("vit_run")
    run(compose_config(f"output_root={root}", *TINY_VIT, "optimizer=adam", "optimizer.lr=0.003",
                       "trainer.epochs=4", "trainer.batch_size=32"), run_dir=root / "run")
    return root / "run"


def test_vit_trains_and_its_table_counts_attention(vit_run):
    summary = read_json(vit_run / "summary.json")
    assert summary["test"]["test/acc"] > 0.5  # chance: 0.1
    model = load_run(vit_run, device="cpu").model
    table = summarize_model(model, torch.zeros(1, 1, 8, 8))
    assert sum(row.params for row in table.rows) == table.total_params == sum(p.numel() for p in model.parameters())
    (attention,) = [row for row in table.rows if row.kind == "MultiheadAttention"]
    width, steps = 32, 16 + 1  # 16 patches and the class token
    assert attention.params == 4 * width * width + 4 * width  # q, k, v and output projections with biases
    # projections 4·L·E², scores L·L·E and their weighted values L·L·E: multiply-adds, 2 FLOPs each
    assert attention.flops == 2 * (4 * steps * width * width + 2 * steps * steps * width)
    assert [row.kind for row in table.rows[:3]] == ["Conv2d", "ClassToken", "LearnedPositions"]
    assert "MultiheadAttention" in (vit_run / "model_summary.txt").read_text()


def test_vit_evaluates_predicts_and_exports_to_torchscript(vit_run, tmp_path):
    evaluation = evaluate_run(vit_run, [])
    assert evaluation["metrics"]["test/acc"] == pytest.approx(read_json(vit_run / "summary.json")["test"]["test/acc"])
    images = torch.rand(5, 1, 8, 8)
    loaded = torch.jit.load(str(export_run(vit_run, "torchscript", out=tmp_path / "ts")))
    with torch.no_grad():
        assert np.allclose(loaded(images).numpy(), load_run(vit_run, device="cpu").model(images).numpy(), atol=1e-5)
    from PIL import Image

    (tmp_path / "images").mkdir()
    for index in range(3):
        Image.fromarray((images[index, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "images" / f"{index}.png")
    predict([str(vit_run), str(tmp_path / "images"), "--out", str(tmp_path / "predictions.csv")])
    with open(tmp_path / "predictions.csv", newline="") as handle:
        assert [row["file"] for row in csv.DictReader(handle)] == ["0.png", "1.png", "2.png"]


@onnx_extra
def test_vit_exports_to_onnx(vit_run, tmp_path):
    import onnxruntime

    path = export_run(vit_run, "onnx", out=tmp_path)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        expected = load_run(vit_run, device="cpu").model(images).numpy()
    assert np.allclose(session.run(None, {"input": images.numpy()})[0], expected, atol=1e-4, rtol=1e-3)


def test_transformer_encoder_classifies_digits_row_by_row_and_tables(cfg_for, tmp_path):
    summary = run(cfg_for(*TINY_LM, "optimizer=adam", "optimizer.lr=0.003", "trainer.epochs=4"),
                  run_dir=tmp_path / "run")
    assert summary["test"]["test/acc"] > 0.5
    regression = run(cfg_for(*TINY_LM, "dataset=diabetes", "model.positions=learned", "debug=smoke"),
                     run_dir=tmp_path / "diabetes")  # a table's 10 columns as 10 steps of one feature
    assert math.isfinite(regression["test"]["test/rmse"])


@pytest.fixture
def tiny_text_lm(tmp_path):
    """A tiny Transformer language model on a repetitive text (windows of 12 characters), trained 12 epochs."""
    from conftest import compose_config

    write_text(tmp_path / "text.txt", REPETITIVE_TEXT)
    run_dir = tmp_path / "lm"
    run(compose_config(f"output_root={tmp_path}", "dataset=text", f"dataset.path={tmp_path / 'text.txt'}",
                       "dataset.num_steps=12", *TINY_LM, "optimizer=adam", "optimizer.lr=0.01",
                       "trainer.epochs=12", "trainer.batch_size=16"), run_dir=run_dir)
    return run_dir


def test_language_model_learns_generates_evaluates_predicts_and_exports(tiny_text_lm, tmp_path):
    summary = read_json(tiny_text_lm / "summary.json")
    assert summary["test"]["test/ppl"] < 3  # the text repeats one sentence of 26 distinct characters
    result = evaluate_run(tiny_text_lm, [], options=OutputOptions(prefix="the quick brown fox jumps over", length=40))
    text = result["generated"]["text"]  # a prefix longer than the 12-character window, continued 40 characters
    assert text.startswith("the quick brown fox jumps over") and len(text) == 30 + 40
    assert " the lazy dog" in text  # it has learned the sentence
    predict([str(tiny_text_lm), "the qu", "--length", "10", "--out", str(tmp_path / "text.csv")])
    assert (tmp_path / "text.csv").read_text().splitlines()[0] == "prefix,prediction"
    loaded = torch.jit.load(str(export_run(tiny_text_lm, "torchscript", out=tmp_path / "ts")))
    ids = torch.randint(0, 20, (3, 17))  # another batch size and length than the traced ones
    with torch.no_grad():
        expected = load_run(tiny_text_lm, device="cpu").model(ids).numpy()
        assert np.allclose(loaded(ids).numpy(), expected, atol=1e-5)


def test_language_model_is_causal_and_continues_by_its_state():
    torch.manual_seed(0)
    model = Transformer([10], 30, task="language_model", hidden_size=16, mlp_size=32, num_heads=2).eval()
    ids = torch.randint(0, 30, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = (ids[:, 6:] + 1) % 30
    with torch.no_grad():
        full = model(ids)
        assert torch.equal(model(changed)[:, :6], full[:, :6])  # no step reads a later one
        outputs, state = model(ids[:, :4], return_state=True)
        for step in range(4, 10):  # one token at a time, as text is generated: the same logits
            outputs, state = model(ids[:, step:step + 1], state=state, return_state=True)
            torch.testing.assert_close(outputs[:, -1], full[:, step], atol=1e-5, rtol=1e-4)
        assert state.shape == (2, 10)
        # past the context (10) the state keeps the last 10 ids, and the window slides
        outputs, state = model(ids[:, :3], state=state, return_state=True)
        assert torch.equal(state, torch.cat([ids[:, 3:], ids[:, :3]], dim=1))
        torch.testing.assert_close(outputs, model(state)[:, -3:], atol=1e-5, rtol=1e-4)
        # a text longer than the context, read as a stream: each step sees the 10 ids up to it, as in training
        long = torch.randint(0, 30, (2, 25))
        outputs, state = model(long, return_state=True)
        assert outputs.shape == (2, 25, 30) and torch.equal(state, long[:, -10:])
        torch.testing.assert_close(outputs[:, :10], model(long[:, :10]), atol=1e-5, rtol=1e-4)
        for step in (10, 17, 24):
            torch.testing.assert_close(outputs[:, step], model(long[:, step - 9:step + 1])[:, -1], atol=1e-5, rtol=1e-4)


def test_attention_settings_are_checked_with_one_line(cfg_for):
    cases = {("model=vit", "model.hidden_size=30"): "hidden_size=30 must be a multiple of num_heads=8",
             ("model=vit", "dataset.resize=null"): "input shape [1, 8, 8] holds no 16x16 patch; resize the images",
             ("model=transformer", "model.positions=rotary"): "positions 'rotary' is not one of: sinusoidal, learned",
             ("model=transformer", "model.context=5"): "context=5: the number of tokens a language model reads"}
    for overrides, message in cases.items():
        with pytest.raises(ConfigError, match=None) as error:
            build_model(validate(cfg_for(*overrides)).model)
        assert message in str(error.value), str(error.value)
    model = Transformer([10], 30, task="language_model", positions="learned", hidden_size=8, num_heads=2)
    with pytest.raises(ValueError, match="11 steps, but the learned positions cover 10; use sinusoidal positions"):
        model(torch.zeros(1, 11, dtype=torch.long))
