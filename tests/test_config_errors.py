"""Bad input fails before training with one line naming the key and the valid choices."""

from __future__ import annotations

import pytest

from conftest import compose_config, run_cli
from dlrun.config import validate
from dlrun.errors import ConfigError

# Each kind of failure through the real CLI (a subprocess costs seconds): an unknown group option and
# unknown keys (Hydra's errors), a wrong type (OmegaConf's), a value out of range (dlrun's schema), a
# bad model setting (met building the model) and a key that must be set elsewhere (Hydra's override).
CLI_CASES = [
    ("model=foo", "unknown model 'foo'; valid choices: alexnet, densenet, googlenet, gru, lenet, linear, lstm, mlp, nin"),
    ("+typo=3", "unknown key 'typo'; valid keys at the top level: seed, name"),
    ("trainer.epoch=3", "unknown key 'trainer.epoch'; valid keys of trainer: epochs, batch_size"),
    ("trainer.epochs=abc", "wrong type for 'trainer.epochs'"),
    ("optimizer.lr=-1", "optimizer.lr=-1 is out of range: must be > 0"),
    ("model.activation=swish", "activation 'swish' is not one of: relu, sigmoid"),  # met building the model
    ("optimizer.weight_decay=0.1", "'optimizer.weight_decay' cannot be set here: "
                                   "set weight decay with regularization.weight_decay"),
]


@pytest.mark.parametrize("override,message", CLI_CASES, ids=[case[0] for case in CLI_CASES])
def test_cli_reports_one_line_and_exit_code_2(tmp_path, override, message):
    result = run_cli(override, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("dlrun: error: ") and message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("outputs/**/checkpoints"))  # nothing trained


def test_full_traceback_on_request(tmp_path):
    result = run_cli("optimizer.lr=-1", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr


# The schema's other checks raise the same ConfigError the CLI prints as one line (CLI_CASES above).
@pytest.mark.parametrize("override,message", [
    ("regularization.dropout=1.5", "regularization.dropout=1.5 is out of range: must be in [0, 1)"),
    ("+model.foo=1", "unknown key 'model.foo'; valid keys for dlrun.models.lenet.LeNet: activation"),
    ("optimizer.betas=[0.9]", "wrong value for 'optimizer.betas': expected a list of 2 values, "
                              "e.g. optimizer.betas=[0.9,0.999]; got [0.9]"),
    ("+optimizer.weight_decay=0.1", "set weight decay with regularization.weight_decay"),
    ("regularization.weight_decay=-1", "regularization.weight_decay=-1.0 is out of range"),
    ("trainer.batch_size=0", "trainer.batch_size=0 is out of range"),
    ("trainer.limit_batches=0", "trainer.limit_batches=0 is out of range"),
    ("device.type=tpu", "device.type='tpu' is not one of: auto, cpu, cuda"),
    ("device.host_allocator=jemalloc", "device.host_allocator='jemalloc' is not one of: tuned, system"),
    ("dataset.val_fraction=1.0", "dataset.val_fraction=1.0 is out of range"),
    ("+model.input_shape_typo=1", "unknown key 'model.input_shape_typo'"),
    ("optimizer=adamw optimizer.betas=[0.9,0.99,0.9]", "expected a list of 2 values"),
    ("optimizer.betas=0.9", "expected a list of 2 values"),
    ("trainer.save_every_steps=0", "trainer.save_every_steps=0 is out of range: must be >= 1 or null (off)"),
    ("trainer.save_every_minutes=0", "trainer.save_every_minutes=0.0 is out of range: must be > 0 or null (off)"),
    ("device.num_threads=2.0", "device.num_threads=2.0 is not one of: auto, a whole number >= 1, null"),
    ("device.num_threads=0", "device.num_threads=0 is out of range: must be >= 1, auto or null"),
])
def test_schema_rejects(override, message):
    with pytest.raises(ConfigError, match=None) as error:
        validate(compose_config(*override.split()))
    assert message in str(error.value)


def test_default_config_is_valid():
    validate(compose_config())


def test_grad_clip_must_not_be_negative():
    with pytest.raises(ConfigError, match="regularization.grad_clip=-1.0 is out of range"):
        validate(compose_config("regularization.grad_clip=-1"))
