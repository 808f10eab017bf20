"""Shared fixtures: configs from Hydra's compose API, and the installed `dlrun` as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

DLRUN = Path(sys.executable).with_name("dlrun")
# Helper modules (test data writers, tiny models named by `_target_` overrides) live in tests/helpers/:
# importable by the tests themselves, and by subprocesses given HELPERS_DIR on their PYTHONPATH.
HELPERS_DIR = str(Path(__file__).parent / "helpers")
sys.path.insert(0, HELPERS_DIR)


def compose_config(*overrides: str) -> DictConfig:
    """The config `dlrun <overrides>` would run, composed by Hydra without starting a run."""
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def prepared_datasets(tmp_path_factory) -> Path:
    """One folder of prepared scikit-learn splits for the whole session: each is made once, by the first test."""
    return tmp_path_factory.mktemp("prepared_datasets")


@pytest.fixture(autouse=True)
def decode_cache_in_tmp(tmp_path_factory, monkeypatch, prepared_datasets):
    """Decode caches and compile caches go to fresh temporary folders (for subprocesses too), never ~/.cache."""
    folder = tmp_path_factory.mktemp("decode_cache")
    monkeypatch.setenv("DLRUN_CACHE", str(folder))
    # Step times and compiled kernels (dlrun.compiling) too: every test decides compile=auto afresh.
    monkeypatch.setenv("DLRUN_COMPILE_CACHE", str(tmp_path_factory.mktemp("compile_cache")))
    # Prepared datasets hold the same splits whoever made them (dlrun.data.prepared_cache): shared.
    monkeypatch.setenv("DLRUN_DATASET_CACHE", str(prepared_datasets))
    return folder


@pytest.fixture
def cfg_for(tmp_path):
    """compose_config with the run's outputs kept in the test's temporary folder."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(f"output_root={tmp_path / 'outputs'}", *overrides)

    return make


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> Path:
    """An MLP trained in this process for 3 epochs on the bundled digits (8x8 grey, 10 classes); shared, read-only."""
    from dlrun.train import run

    root = tmp_path_factory.mktemp("digits_run")
    run(compose_config(f"output_root={root}", "model=mlp", "trainer.epochs=3"), run_dir=root / "run")
    return root / "run"


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the installed `dlrun` console script as a user would."""
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    environment.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run([str(DLRUN), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environment)


def wait_for(path: Path, process: subprocess.Popen, timeout: float) -> Path:
    """`path` once the running `process` (stderr piped) has written it; fails with the process's
    stderr if it exits first, or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the process exited ({process.returncode}) before {path.name}: "
                                 f"{process.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.005)
    return path


def only_run_dir(root: Path) -> Path:
    """The single run directory (the one holding status.json) under `root`."""
    found = [p.parent for p in root.glob("**/status.json")]
    assert len(found) == 1, found
    return found[0]


# Metrics that measure time, not training: they differ between any two runs, exact or not.
TIMINGS = ("examples_per_sec", "tokens_per_sec", "epoch_time_s", "compile_s", "run/duration_s")


def untimed(metrics: dict) -> dict:
    """`metrics` without the TIMINGS, for comparing runs that must agree exactly."""
    return {key: value for key, value in metrics.items() if key not in TIMINGS}


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
