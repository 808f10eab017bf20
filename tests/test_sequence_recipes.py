"""The d2l chapter 8-9 recipes: each runs; tokens/s; multi-step forecasts; a short GRU run learns the text."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import read_json
from dataset_files import place_time_machine
from dlrun.data.storage import DATA_ROOT_VARIABLE
from dlrun.data.text import read_corpus
from dlrun.errors import ConfigError
from dlrun.tasks.forecast import FIGURE_FILE, Series, evaluate_forecasts, k_step_forecasts
from dlrun.train import run
from test_recipes import sweep_choices

LANGUAGE_RECIPES = ["d2l/rnn", "d2l/gru", "d2l/lstm", "d2l/deep_lstm", "d2l/bidirectional_lstm", "d2l/sampling",
                    "d2l/transformer"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# On a busy 2-core machine PyTorch's two threads wait on each other and a run takes several times
# longer than on one; the fixture below gives the process its thread count back after each test.
ONE_THREAD = "device.num_threads=1"


@pytest.fixture(autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def text_root(tmp_path, monkeypatch) -> Path:
    """$DLRUN_DATA holding a stand-in timemachine.txt (real prose scikit-learn ships): no download."""
    root = tmp_path / "data"
    place_time_machine(root)
    monkeypatch.setenv(DATA_ROOT_VARIABLE, str(root))
    return root


def epochs_of(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "train/loss" in record]


@pytest.mark.parametrize("recipe", LANGUAGE_RECIPES)
def test_language_recipe_runs_a_smoke_version(recipe, text_root, cfg_for, tmp_path):
    for number, job in enumerate(sweep_choices(recipe)):  # d2l/sampling: sequential, then random
        run_dir = tmp_path / f"run{number}"
        # smoke: 1 epoch of 3 batches; batches of 8 windows keep the 2-layer bidirectional LSTM quick
        summary = run(cfg_for(f"+experiment={recipe}", *job, "debug=smoke", "trainer.batch_size=8", ONE_THREAD),
                      run_dir=run_dir)
        assert read_json(run_dir / "status.json")["status"] == "completed"
        assert summary["monitor"] == "val/ppl"
        for name in ("train/ppl", "val/ppl", "tokens_per_sec"):
            assert math.isfinite(summary["final"][name]), name
        assert math.isfinite(summary["test"]["test/ppl"])
        events = EventAccumulator(str(run_dir / "tb"), size_guidance={"tensors": 0}).Reload()
        (sample,) = events.Tensors("sample/text_summary")  # the epoch's generated text, d2l's prefix first
        assert sample.tensor_proto.string_val[0].decode().startswith("time traveller ")


def test_recipes_use_the_books_settings(text_root, cfg_for):
    """d2l 8.5-9.4: 10,000 characters, batch 32, 35 steps, SGD, clip 1, 500 epochs; hidden, layers, lr per model."""
    expected = {"d2l/rnn": ("RNN", 512, 1, False, 1.0), "d2l/gru": ("GRU", 256, 1, False, 1.0),
                "d2l/lstm": ("LSTM", 256, 1, False, 1.0), "d2l/deep_lstm": ("LSTM", 256, 2, False, 2.0),
                "d2l/bidirectional_lstm": ("LSTM", 256, 2, True, 1.0)}
    for recipe, (cell, hidden, layers, bidirectional, lr) in expected.items():
        cfg = cfg_for(f"+experiment={recipe}")
        assert cfg.model._target_.endswith(f".{cell}"), recipe
        assert (cfg.model.hidden_size, cfg.model.num_layers, cfg.model.bidirectional) == (hidden, layers, bidirectional)
        assert (cfg.optimizer._target_, cfg.optimizer.lr, cfg.regularization.grad_clip) == ("torch.optim.SGD", lr, 1)
        assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.dataset.num_steps) == (500, 32, 35)
        assert (cfg.dataset.level, cfg.dataset.clean, cfg.dataset.sampling) == ("char", True, "sequential")
        assert cfg.dataset.max_tokens == 10000
    assert cfg_for("+experiment=d2l/rnn").model.init == "normal"  # the from-scratch N(0, 0.01²) weights
    assert sweep_choices("d2l/sampling") == [["dataset.sampling=sequential"], ["dataset.sampling=random"]]


def test_tokens_per_sec_is_examples_per_sec_times_num_steps(text_root, cfg_for, tmp_path):
    run_dir = tmp_path / "run"
    summary = run(cfg_for("+experiment=d2l/gru", "dataset.num_steps=7", "trainer.epochs=2", "trainer.limit_batches=2",
                          "model.hidden_size=16", ONE_THREAD), run_dir=run_dir)
    records = epochs_of(run_dir)
    assert len(records) == 2
    for record in [*records, summary["final"]]:
        assert record["tokens_per_sec"] == pytest.approx(record["examples_per_sec"] * 7, rel=1e-12)
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    logged = [event.value for event in events.Scalars("tokens_per_sec")]
    assert logged == pytest.approx([record["tokens_per_sec"] for record in records], rel=1e-6)


def unigram_perplexity_of(text_root: Path) -> float:
    """The perplexity of character frequencies alone on the recipes' 10,000 training characters (≈ 17 in English)."""
    ids = read_corpus(str(text_root / "timemachine.txt"), clean=True).ids[:10000]
    frequencies = torch.bincount(ids).double() / len(ids)
    frequencies = frequencies[frequencies > 0]
    return math.exp(-(frequencies * frequencies.log()).sum().item())


@pytest.mark.slow
def test_a_short_gru_run_learns_far_beyond_character_frequencies(text_root, cfg_for, tmp_path):
    """The GRU recipe for 100 of its 500 epochs (under a minute on one idle CPU core) beats the unigram model by far."""
    unigram_perplexity = unigram_perplexity_of(text_root)
    summary = run(cfg_for("+experiment=d2l/gru", "trainer.epochs=100", ONE_THREAD), run_dir=tmp_path / "run")
    assert 10 < unigram_perplexity < 25
    assert summary["final"]["train/ppl"] < 0.6 * unigram_perplexity
    assert summary["test"]["test/ppl"] < unigram_perplexity


@pytest.mark.slow
def test_a_short_transformer_run_learns_far_beyond_character_frequencies_and_writes(text_root, cfg_for, tmp_path):
    """The Transformer recipe for 12 of its 50 epochs (about 15 s on one idle CPU core): far below the unigram
    perplexity on its training text, well below it on the held-out text, and a sample of 50 new characters."""
    unigram_perplexity = unigram_perplexity_of(text_root)
    summary = run(cfg_for("+experiment=d2l/transformer", "trainer.epochs=12", ONE_THREAD), run_dir=tmp_path / "run")
    assert summary["final"]["train/ppl"] < 0.6 * unigram_perplexity  # measured: 8.9 against 17.2
    assert summary["test"]["test/ppl"] < 0.8 * unigram_perplexity  # measured: 12.3
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0}).Reload()
    sample = events.Tensors("sample/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert sample.startswith("time traveller ") and len(sample) == len("time traveller ") + 50
    assert len(set(sample[15:].split())) >= 3  # words, not one character repeated


def linear_model(weights: list[float], bias: float = 0.0) -> nn.Linear:
    model = nn.Linear(len(weights), 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weights]))
        model.bias.fill_(bias)
    return model


def test_forecasts_of_an_exactly_linear_series_are_exact(tmp_path):
    values = 0.5 + 0.25 * torch.arange(100, dtype=torch.float32)
    extrapolate = linear_model([0.0, -1.0, 2.0])  # x_t = 2 x_{t-1} - x_{t-2}: exact on a line
    forecasts = k_step_forecasts(lambda window: extrapolate(window), values, tau=3, max_steps=16)
    assert forecasts.shape == (100 - 3 - 16 + 1, 16)
    for k in range(1, 17):  # column k-1 of row i forecasts values[i + tau + k - 1]
        torch.testing.assert_close(forecasts[:, k - 1], values[3 + k - 1: 3 + k - 1 + len(forecasts)])
    series = Series(values, tau=3, test_start=60, horizons=(1, 4, 16))
    errors = evaluate_forecasts(extrapolate, series, tmp_path)
    assert set(errors) == {"forecast/mse_1", "forecast/mse_4", "forecast/mse_16"}
    assert max(errors.values()) < 1e-8
    assert (tmp_path / FIGURE_FILE).read_bytes().startswith(PNG_MAGIC)


def test_forecast_errors_grow_with_the_horizon_as_errors_compound(tmp_path):
    """Persistence (x_t = x_{t-1}) on a line of slope 0.25 is k * 0.25 off after k steps: MSE (k/4)²."""
    values = 0.25 * torch.arange(200, dtype=torch.float32)
    errors = evaluate_forecasts(linear_model([0.0, 0.0, 1.0]), Series(values, 3, 100, (1, 4, 16, 64)), tmp_path)
    for k in (1, 4, 16, 64):
        assert errors[f"forecast/mse_{k}"] == pytest.approx((k / 4) ** 2, rel=1e-5)


def test_series_rejects_horizons_the_series_cannot_hold():
    with pytest.raises(ValueError, match="too short"):
        Series(torch.zeros(20), tau=4, test_start=10, horizons=(1, 64))
    with pytest.raises(ValueError, match="test_start"):
        Series(torch.zeros(100), tau=4, test_start=90, horizons=(1, 16))


def test_sine_recipe_reports_k_step_forecast_errors_and_draws_them(cfg_for, tmp_path):
    run_dir = tmp_path / "run"
    summary = run(cfg_for("+experiment=d2l/sine", ONE_THREAD), run_dir=run_dir)
    assert summary["final"]["train/loss"] < 0.08  # d2l: 0.05 after 5 epochs; the noise alone is 0.04
    errors = [summary["test"][f"forecast/mse_{k}"] for k in (1, 4, 16, 64)]
    assert errors[0] < 0.1 and errors == sorted(errors) and errors[3] > 3 * errors[0]
    assert (run_dir / FIGURE_FILE).read_bytes().startswith(PNG_MAGIC)
    events = EventAccumulator(str(run_dir / "tb")).Reload()
    assert events.Scalars("forecast/mse_64")[-1].value == pytest.approx(errors[3], rel=1e-6)
    assert read_json(run_dir / "summary.json")["test"]["forecast/mse_1"] == pytest.approx(errors[0])


def test_sine_rejects_forecasts_longer_than_its_test_part(cfg_for, tmp_path):
    with pytest.raises(ConfigError, match=r"dataset=sine: forecast_steps=\[1, 500\] must be >= 1"):
        run(cfg_for("dataset=sine", "model=mlp", "dataset.forecast_steps=[1,500]"), run_dir=tmp_path / "run")
    assert read_json(tmp_path / "run" / "status.json")["exit_code"] == 2
