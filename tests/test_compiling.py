"""device.compile=auto decides from measured step times; compile time is reported apart from training time.

No test here compiles for real (tests/test_device.py has one real compile): the decision's inputs
are faked through the step-time file, and `torch.compile` is replaced by a stand-in whose first
call takes a known time, like a compile.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from torch._inductor.runtime.cache_dir_utils import default_cache_dir

from conftest import compose_config
from dlrun.config import validate
from dlrun.engine import compiling
from dlrun.engine.compiling import Estimate, StepTimes, decide, steps_to_pay
from dlrun.errors import ConfigError
from dlrun.train import run

SMOKE = ("model=mlp", "device=cpu", "optimizer=sgd", "trainer.batch_size=32", "trainer.limit_batches=12")
FAKE_COMPILE_S = 0.3


def test_auto_decides_no_for_a_smoke_run_and_yes_for_a_long_one():
    nothing_compiled = Estimate(eager_step_s=0.02)
    assert not decide(24, nothing_compiled).compile  # 0.5 s of training against a 40 s compile
    long = decide(200_000, nothing_compiled)  # 4000 s: an assumed 40 s compile is 1 %
    assert long.compile and "1.0 %" in long.reason
    assert decide(24, nothing_compiled).says == "skipped — this run is too short to repay a ~40 s compile"
    assert not decide(20_000, nothing_compiled).compile  # 400 s: 10 % is too much to risk
    measured = Estimate(eager_step_s=0.02, compiled_step_s=0.011, compile_s=15.0)
    assert not decide(1_000, measured).compile  # saves 9 s: less than the compile
    yes = decide(5_000, measured)  # saves 45 s against 15 s
    assert yes.compile and "saves 45 s" in yes.reason
    assert steps_to_pay(measured) == pytest.approx(1.25 * 15.0 / 0.009)
    assert not decide(10**9, Estimate(0.02, 0.025, 1.0)).compile  # compiled is slower: never pays
    assert steps_to_pay(Estimate(0.02, 0.025, 1.0)) is None
    assert not decide(10**9, Estimate()).compile  # nothing measured: eager until the first epoch has


def test_a_smoke_run_stays_eager_and_records_its_step_time(cfg_for, tmp_path, caplog):
    times = StepTimes()
    with caplog.at_level(logging.INFO, logger="dlrun"):
        summary = run(cfg_for(*SMOKE, "trainer.epochs=2"), run_dir=tmp_path / "run")
    decisions = [r.getMessage() for r in caplog.records if r.getMessage().startswith("compile:")]
    assert decisions == [  # in words on the console, in numbers in dlrun.log; epoch 2's "no" is not repeated
        "compile: skipped — this run measures how long a step takes; later runs of this model decide from it",
        "compile: no: no eager step time measured yet for this model (the first epoch measures it)"]
    assert summary["compile"]["compiled"] is False and summary["compile"]["compile_s"] == 0.0
    (signature, entry), = times.read().items()
    assert "[32, 1, 8, 8]" in signature and "amp=off" in signature  # batch shape and settings
    assert 0 < entry["eager_step_s"] < 1 and "compiled_step_s" not in entry
    assert all("compile_s" not in line for line in _metric_lines(tmp_path / "run"))


def test_auto_compiles_when_measured_times_say_it_pays_and_reports_compile_time_apart(
        cfg_for, tmp_path, monkeypatch, caplog):
    run(cfg_for(*SMOKE, "trainer.epochs=1"), run_dir=tmp_path / "measure")  # records this workload's signature
    times = StepTimes()
    (signature, _), = times.read().items()
    times.update(signature, eager_step_s=10.0, compiled_step_s=1.0, compile_s=2.0)  # faked: compiling pays
    monkeypatch.setattr(compiling.torch, "compile", _slow_first_call_compile)
    with caplog.at_level(logging.INFO, logger="dlrun"):
        summary = run(cfg_for(*SMOKE, "trainer.epochs=2"), run_dir=tmp_path / "run")

    log = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("compile: yes: 24 steps x (10000.00 - 1000.00) ms saves 216 s") for line in log)
    assert "compile: on — it saves about 4 min over this run, against a 2 s compile" in log
    assert any(line.startswith("compiled in 0.") and "warm Inductor cache in " in line for line in log)
    report = summary["compile"]
    assert report["compiled"] is True and report["cache"] == "warm"
    assert report["compile_s"] >= FAKE_COMPILE_S
    epoch1, epoch2 = _metric_lines(tmp_path / "run")[:2]
    assert epoch1["compile_s"] == pytest.approx(report["compile_s"])  # metrics.jsonl and TensorBoard
    assert "compile_s" not in epoch2  # one batch shape: compiled once
    # Throughput is over the epoch's time less the compile.
    # Throughput is over the epoch's training time less the compile (epoch_time_s adds validation).
    assert 12 * 32 / epoch1["examples_per_sec"] <= epoch1["epoch_time_s"] - epoch1["compile_s"]
    # The run measured its own compiled step and compile time for the next decision.
    recorded = times.read()[signature]
    assert recorded["compile_s"] == pytest.approx(report["compile_s"]) and recorded["compiled_step_s"] < 1.0


def test_compile_true_compiles_from_the_first_step(cfg_for, tmp_path, monkeypatch):
    monkeypatch.setattr(compiling.torch, "compile", _slow_first_call_compile)
    summary = run(cfg_for(*SMOKE, "trainer.epochs=1", "device.compile=true"), run_dir=tmp_path / "run")
    assert summary["compile"]["reason"] == "device.compile=true" and summary["compile"]["cache"] == "cold"
    assert summary["compile"]["compile_s"] >= FAKE_COMPILE_S


def test_compile_false_runs_the_plain_model(cfg_for, tmp_path):
    summary = run(cfg_for(*SMOKE, "trainer.epochs=1", "device.compile=false"), run_dir=tmp_path / "run")
    assert summary["compile"] is None and not StepTimes().path.exists()


def test_inductor_cache_goes_under_the_dlrun_cache_unless_the_user_chose_one(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("DLRUN_COMPILE_CACHE", str(tmp_path / "cache"))
    assert compiling.use_inductor_cache() == str(tmp_path / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # imports set Inductor's default
    assert compiling.use_inductor_cache() == str(tmp_path / "cache" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "/elsewhere")
    assert compiling.use_inductor_cache() == "/elsewhere"
    monkeypatch.delenv("DLRUN_COMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compiling.cache_folder() == tmp_path / "xdg" / "dlrun" / "compile"


def _slow_first_call_compile(model, mode="default"):
    """A stand-in for torch.compile: the same function, its first call as slow as a (very quick) compile."""
    calls = []

    def compiled(*args, **kwargs):
        if not calls:
            time.sleep(FAKE_COMPILE_S)
        calls.append(1)
        return model(*args, **kwargs)

    return compiled


def _metric_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_unknown_compile_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"device.compile='sometimes' is not one of: auto, true, false"):
        validate(compose_config("device.compile=sometimes"))
