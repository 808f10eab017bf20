"""A bad config is reported before torch is imported; the signature table the checks read is the code's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlrun.config import signatures

# `python -m dlrun <args>`, then whether torch was imported (on stdout, apart from the error on stderr).
WRAPPED_CLI = """import runpy, sys
sys.argv = ["dlrun", *sys.argv[1:]]
try:
    runpy.run_module("dlrun", run_name="__main__")
finally:
    print("torch imported:", "torch" in sys.modules)
"""

BEFORE_TORCH = [
    ("model=foo", "unknown model 'foo'; valid choices: alexnet, densenet"),
    ("+typo=1", "unknown key 'typo'; valid keys at the top level: seed, name"),
    ("trainer.epochs=abc", "wrong type for 'trainer.epochs'"),
    ("trainer.epochs=0", "trainer.epochs=0 is out of range: must be >= 1"),
    ("optimizer.betas=[0.9]", "wrong value for 'optimizer.betas': expected a list of 2 values, "
                              "e.g. optimizer.betas=[0.9,0.999]; got [0.9]"),
    # Hydra refuses a key the option lacks before dlrun's checks run: the hint names the chosen option's keys.
    ("model=mlp model.foo=1", "unknown key 'model.foo'; valid keys for dlrun.models.mlp.MLP: activation, "
                              "activation_param, dropout"),
]


@pytest.mark.parametrize("overrides,message", BEFORE_TORCH, ids=[case[0] for case in BEFORE_TORCH])
def test_a_config_error_exits_2_with_one_line_before_torch_is_imported(tmp_path, overrides, message):
    result = subprocess.run([sys.executable, "-c", WRAPPED_CLI, *overrides.split()], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"dlrun: error: {result.stderr.strip().removeprefix('dlrun: error: ')}"]
    assert message in result.stderr
    assert "torch imported: False" in result.stdout


def test_the_signature_table_is_the_codes():
    """signatures.json says what `inspect.signature` says of every shipped `_target_` (`make signatures`)."""
    stored, built = signatures.table(), signatures.build_table()
    assert "torch.optim.Adam" in built and "dlrun.models.lenet.LeNet" in built
    stale = sorted(target for target in set(stored) | set(built) if stored.get(target) != built.get(target))
    assert not stale, f"signatures.json is out of date for {stale}: run `make signatures`"
    assert signatures.table_torch_version() == signatures.torch_version(), "run `make signatures`"
    assert built["torch.optim.lr_scheduler.ReduceLROnPlateau"]["metric_driven"]
    assert built["torch.optim.Adam"]["parameters"]["betas"]["length"] == 2


def test_a_target_not_in_the_table_is_described_from_its_code(monkeypatch):
    described = signatures.signature_of("tiny_rnn.TinyRNN")  # tests/helpers: a user's own model
    assert described == signatures.describe(__import__("tiny_rnn").TinyRNN)
    assert "tiny_rnn.TinyRNN" not in signatures.table()
    # Another torch than the table's: torch's own targets are read from the installed one.
    monkeypatch.setattr(signatures, "table_torch_version", lambda: "1.0.0")
    monkeypatch.setitem(signatures._stored(), "torch.optim.SGD", {"parameters": {}, "var_keyword": True})
    assert "momentum" in signatures.signature_of("torch.optim.SGD")["parameters"]
