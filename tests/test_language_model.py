"""Text datasets and the language-model task: windows, streams, carried state, perplexity, samples."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import read_json
from dataset_files import REPETITIVE_TEXT, write_text
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.data.text import load_text, read_corpus
from dlrun.errors import DataError
from dlrun.tasks import LanguageModel
from dlrun.train import run
from tiny_rnn import TinyRNN

HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
RNN = ("model=mlp", "model._target_=tiny_rnn.TinyRNN")


def test_vocabulary_and_windows_shifted_by_one(tmp_path):
    path = tmp_path / "t.txt"
    write_text(path, "abab cab. " * 10)
    corpus = read_corpus(str(path))
    assert corpus.tokens[0] == "<unk>" and set(corpus.tokens[1:]) == set("abc. ")
    assert corpus.tokens[1] in ("a", "b")  # most frequent first
    splits = load_text(str(path), num_steps=4, sample_prefix="ab z")
    inputs, targets = splits.train.inputs, splits.train.targets
    assert inputs.shape[1] == 4 and torch.equal(inputs[:, 1:], targets[:, :-1])
    assert torch.equal(inputs[1:, 0], targets[:-1, -1])  # windows are consecutive
    assert splits.extras["sample_prefix"][-1] == 0  # "z" is unknown
    words = read_corpus(str(path), level="word", clean=True)
    assert set(words.tokens) == {"<unk>", "abab", "cab"}


def test_sequential_streams_continue_row_by_row():
    ids = torch.arange(100).reshape(20, 5)  # 20 consecutive windows of 5 tokens
    loader = TensorLoader(TensorSplit(ids, ids + 1), batch_size=4, streams=True)
    batches = [inputs for inputs, _ in loader]
    assert len(loader) == len(batches) == 5 and all(b.shape == (4, 5) for b in batches)
    for previous, current in zip(batches, batches[1:]):
        assert torch.equal(current[:, 0], previous[:, -1] + 1)  # row j goes on where it stopped


def test_state_is_carried_and_detached_only_with_sequential_sampling():
    model = TinyRNN([5], 7, hidden_size=4)
    inputs = torch.randint(0, 7, (3, 5))
    for carry in (True, False):
        task = LanguageModel(list("abcdefg"), "", [1], carry_state=carry)
        model.received_states.clear()
        task.start_pass(training=True)
        task.forward(model, inputs)
        task.forward(model, inputs)
        task.start_pass(training=False)
        task.forward(model, inputs)
        first, second, after_reset = model.received_states
        assert first is None and after_reset is None
        assert (second is not None) == carry
        if carry:
            assert not second.requires_grad and second.shape == (1, 3, 4)


@pytest.mark.parametrize("sampling", ["random", "sequential"])
def test_perplexity_falls_far_below_the_vocabulary_size(sampling, cfg_for, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)
    path = tmp_path / "text.txt"
    write_text(path, REPETITIVE_TEXT)
    cfg = cfg_for("dataset=text", f"dataset.path={path}", f"dataset.sampling={sampling}", "dataset.num_steps=10",
                  "dataset.sample_prefix='the '", *RNN, "trainer.batch_size=16", "trainer.epochs=4")
    summary = run(cfg, run_dir=tmp_path / "run")
    vocab_size = cfg.dataset.num_outputs
    assert vocab_size == 1 + len(set(REPETITIVE_TEXT))
    assert summary["monitor"] == "val/ppl"
    assert summary["final"]["train/ppl"] < vocab_size / 4 and summary["test"]["test/ppl"] < vocab_size / 4
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"tensors": 0}).Reload()
    samples = events.Tensors("sample/text_summary")
    assert [s.step for s in samples] == [1, 2, 3, 4]
    last = samples[-1].tensor_proto.string_val[0].decode()
    assert last.startswith("the ") and len(last) == len("the ") + 50


def test_language_models_clip_gradients_by_default():
    assert LanguageModel.default_grad_clip == 1.0


def test_time_machine_reads_a_placed_copy(cfg_for, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)
    path = tmp_path / "timemachine.txt"
    write_text(path, "The Time Machine, by H. G. Wells [1898]\n\n" + "I\nThe Time Traveller (for so...\n" * 30)
    summary = run(cfg_for("dataset=time_machine", f"dataset.path={path}", "dataset.download=false", *RNN,
                          "debug=smoke", "trainer.batch_size=4", "dataset.num_steps=5"), run_dir=tmp_path / "run")
    assert read_json(tmp_path / "run" / "status.json")["status"] == "completed"
    assert summary["model"]["params"] > 0
    assert read_corpus(str(path), clean=True).tokens[1:] and "," not in read_corpus(str(path), clean=True).tokens


def test_held_out_tokens_train_on_the_first_tokens_and_hold_out_what_follows(tmp_path):
    """d2l trains on exactly the first max_tokens tokens; validation and test come right after them."""
    path = tmp_path / "t.txt"
    write_text(path, "".join(chr(ord("a") + i % 26) for i in range(400)))
    ids = read_corpus(str(path)).ids
    splits = load_text(str(path), num_steps=5, max_tokens=100, held_out_tokens=40)
    assert torch.equal(splits.train.inputs.flatten(), ids[:95]) and torch.equal(splits.train.targets.flatten(), ids[1:96])
    assert torch.equal(splits.val.inputs.flatten(), ids[100:135])  # 7 windows of 5 (the 40th token is a target)
    assert torch.equal(splits.test.inputs.flatten(), ids[140:175])
    everything = load_text(str(path), num_steps=5, held_out_tokens=40)  # no max_tokens: the last 80 are held out
    assert torch.equal(everything.test.targets.flatten(), ids[361:396]) and len(everything.train) == (320 - 1) // 5
    with pytest.raises(DataError, match="too few for max_tokens=350 training tokens and 2 x held_out_tokens=40"):
        load_text(str(path), num_steps=5, max_tokens=350, held_out_tokens=40)
    with pytest.raises(ValueError, match="held_out_tokens=5 must exceed num_steps=5"):
        load_text(str(path), num_steps=5, held_out_tokens=5)


def test_held_out_validation_is_used_as_given(cfg_for, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)
    path = tmp_path / "text.txt"
    write_text(path, REPETITIVE_TEXT)
    cfg = cfg_for("dataset=text", f"dataset.path={path}", "dataset.max_tokens=1000", "dataset.held_out_tokens=300",
                  "dataset.num_steps=10", "dataset.sampling=sequential")
    data = build_data(validate(cfg), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert [len(loader.split) for loader in (data.train, data.val, data.test)] == [99, 29, 29]
