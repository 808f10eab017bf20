"""Stop signals, the save schedule, stale runs and in-place resumes, in-process (real signals sent to this process)."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config, read_json, untimed
from dataset_files import REPETITIVE_TEXT, write_image_folder, write_text
from dlrun.atomic import write_json
from dlrun.config import validate
from dlrun.data.build import build_data
from dlrun.data.files import FileLoader
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.engine.precision import Precision
import dlrun.engine.setup
from dlrun.errors import CheckpointError, ConfigError, RunDirectoryError
from dlrun.run import checkpoint
from dlrun.run.leaderboard import read_sweep
from dlrun.run.save_points import SaveSchedule
from dlrun.run.status import effective_status
from dlrun.run.stop_signals import Interrupted, StopSignals
from dlrun.train import run

HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
REAL_STEP = Precision.step


def send_at_call(monkeypatch, owner, name: str, call: int, signum=signal.SIGTERM) -> None:
    """Make the `call`-th call of `owner.name` send `signum` to this process (then do its work).

    Patched on Precision.step, the signal arrives during optimizer step number `call`.
    """
    original = getattr(owner, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapper)


def test_signals_only_set_a_flag_and_the_previous_handlers_come_back():
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt
        assert stop.requested and stop.name == "SIGUSR1" and stop.repeats == 2
        assert stop.interrupted("x").exit_code == 138
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_python_handler_that_was_there_before_is_called_after_the_stop():
    """As submitit's requeue handler on SIGUSR2: it runs once dlrun has saved and recorded its status."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(Interrupted) as stopped:
            with StopSignals() as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert calls == []  # not while the run is stopping
                raise stop.interrupted("stopped")
        assert calls == [signal.SIGUSR2] and stopped.value.exit_code == 140
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_checkpoint_written_while_a_signal_arrives_still_loads(tmp_path):
    state = {"model": {"w": torch.arange(1000.0)}, "epoch": 3}
    real_save = torch.save

    def save_with_a_signal_in_the_middle(obj, path):
        os.kill(os.getpid(), signal.SIGTERM)
        real_save(obj, path)
        os.kill(os.getpid(), signal.SIGTERM)

    with StopSignals() as stop:
        checkpoint.atomic_write(tmp_path / "last.pt", lambda temporary: save_with_a_signal_in_the_middle(state, temporary))
    assert stop.requested and stop.repeats == 1
    loaded = checkpoint.load_checkpoint(tmp_path / "last.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_the_save_schedule_counts_steps_and_minutes_without_touching_tensors():
    now = [0.0]
    steps = SaveSchedule(every_steps=3, every_minutes=None, clock=lambda: now[0])
    assert [step for step in range(1, 10) if steps.due(step)] == [3, 6, 9]
    minutes = SaveSchedule(every_steps=None, every_minutes=10, clock=lambda: now[0])
    now[0] = 599.0
    assert not minutes.due(1)
    now[0] = 600.0
    assert minutes.due(2)
    minutes.restart()  # after a save, the next one is 10 minutes later
    now[0] = 1199.0
    assert not minutes.due(3)
    assert not SaveSchedule(None, None).due(10**9)


def test_a_signal_during_setup_stops_before_the_first_step_and_resumes_exactly(cfg_for, tmp_path, monkeypatch):
    setup = ("model=mlp", "regularization.dropout=0.3", "debug=smoke", "device.num_threads=1")
    straight = run(cfg_for(*setup), run_dir=tmp_path / "straight")
    send_at_call(monkeypatch, dlrun.engine.setup, "build_model", 1)
    with pytest.raises(Interrupted, match="stopped by SIGTERM at epoch 1, step 0 of 2; last.pt holds this position"):
        run(cfg_for(*setup), run_dir=tmp_path / "outputs" / "stopped")
    monkeypatch.undo()
    status = read_json(tmp_path / "outputs" / "stopped" / "status.json")
    assert (status["status"], status["signal"], status["epoch"], status["step"], status["exit_code"]) == (
        "interrupted", "SIGTERM", 1, 0, 143)
    resumed = run(cfg_for(*setup, "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "fresh")
    assert untimed(resumed["final"]) == untimed(straight["final"]) and resumed["test"] == straight["test"]


def test_a_language_model_stopped_mid_epoch_resumes_with_its_carried_state(cfg_for, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(HELPERS_DIR)
    path = tmp_path / "text.txt"
    write_text(path, REPETITIVE_TEXT)
    setup = ("dataset=text", f"dataset.path={path}", "dataset.sampling=sequential", "dataset.num_steps=8",
             "model=mlp", "model._target_=tiny_rnn.TinyRNN", "trainer.batch_size=4", "trainer.epochs=2",
             "device.num_threads=1")
    straight = run(cfg_for(*setup), run_dir=tmp_path / "straight")
    send_at_call(monkeypatch, Precision, "step", 5)  # training step 5 of epoch 1
    with pytest.raises(Interrupted, match="at epoch 1, step 5 of"):
        run(cfg_for(*setup), run_dir=tmp_path / "outputs" / "stopped")
    last = torch.load(tmp_path / "outputs" / "stopped" / "checkpoints" / "last.pt", weights_only=True)
    assert last["position"]["step"] == 5 and last["position"]["carried"].shape[1] == 4  # (layers, batch, hidden)
    monkeypatch.setattr(Precision, "step", REAL_STEP)
    resumed = run(cfg_for(*setup, "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "fresh")
    assert untimed(resumed["final"]) == untimed(straight["final"]) and resumed["test"] == straight["test"]
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "outputs" / "stopped" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_an_interrupted_kfold_run_keeps_its_completed_folds(cfg_for, tmp_path, monkeypatch):
    setup = ("dataset=diabetes", "model=mlp", "model.hidden=[16]", "trainer.kfold=3", "trainer.epochs=2",
             "trainer.batch_size=64", "device.num_threads=1")
    straight = run(cfg_for(*setup), run_dir=tmp_path / "straight")
    # 4 steps per epoch, 2 epochs per fold: step 11 is fold 1's third step.
    send_at_call(monkeypatch, Precision, "step", 8 + 3, signal.SIGINT)
    with pytest.raises(Interrupted, match="fold 1: stopped by SIGINT at epoch 1, step 3 of 4"):
        run(cfg_for(*setup), run_dir=tmp_path / "outputs" / "k")
    monkeypatch.setattr(Precision, "step", REAL_STEP)
    fold0 = tmp_path / "outputs" / "k" / "fold_0" / "summary.json"
    stamp = fold0.stat().st_mtime_ns
    resumed = run(cfg_for(*setup, "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "fresh")
    assert fold0.stat().st_mtime_ns == stamp  # fold 0 was not trained again
    assert [untimed(row) for row in resumed["folds"]] == [untimed(row) for row in straight["folds"]]


def test_a_running_status_whose_process_is_gone_is_stale_in_the_leaderboard(tmp_path, capsys):
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    host = socket.gethostname()
    cases = {"0_dead": {"host": host, "pid": dead_pid}, "1_alive": {"host": host, "pid": os.getpid()},
             "2_elsewhere": {"host": "another-node", "pid": dead_pid},
             "3_reused_pid": {"host": host, "pid": os.getpid(), "pid_started": 1}}
    for name, where in cases.items():
        (tmp_path / name / ".hydra").mkdir(parents=True)
        write_json(tmp_path / name / "status.json", {"status": "running", **where})
    assert {name: effective_status(read_json(tmp_path / name / "status.json")) for name in cases} == {
        "0_dead": "stale", "1_alive": "running", "2_elsewhere": "running", "3_reused_pid": "stale"}
    summary = read_sweep(tmp_path)
    assert [(job.name, job.status) for job in summary.failed] == [
        ("0_dead", "stale"), ("1_alive", "running"), ("2_elsewhere", "running"), ("3_reused_pid", "stale")]
    assert "process" in summary.failed[0].error and "gone" in summary.failed[0].error


def test_a_live_run_is_not_continued_twice(cfg_for, tmp_path):
    run(cfg_for("debug=smoke"), run_dir=tmp_path / "outputs" / "a")
    status = read_json(tmp_path / "outputs" / "a" / "status.json")
    write_json(tmp_path / "outputs" / "a" / "status.json", {**status, "status": "running", "pid": os.getpid(),
                                                             "pid_started": None})
    with pytest.raises(RunDirectoryError, match="is still running"):
        run(cfg_for("debug=smoke", "trainer.resume=auto"), run_dir=tmp_path / "outputs" / "b")


def test_a_fixed_run_directory_continues_its_run_and_refuses_another_config(cfg_for, tmp_path, monkeypatch):
    send_at_call(monkeypatch, Precision, "step", 2)
    with pytest.raises(Interrupted):
        run(cfg_for("debug=smoke"), run_dir=tmp_path / "fixed")
    monkeypatch.setattr(Precision, "step", REAL_STEP)
    summary = run(cfg_for("debug=smoke"), run_dir=tmp_path / "fixed")  # as a requeued `hydra.run.dir=fixed` job
    assert summary["resumed_from"] == str(tmp_path / "fixed" / "checkpoints" / "last.pt")
    assert run(cfg_for("debug=smoke"), run_dir=tmp_path / "fixed")["test"] == summary["test"]  # done: nothing to do
    with pytest.raises(ConfigError, match="already holds a run of another config"):
        run(cfg_for("debug=smoke", "seed=3"), run_dir=tmp_path / "fixed")


def test_a_mid_epoch_checkpoint_needs_the_same_batches(cfg_for, tmp_path, monkeypatch):
    send_at_call(monkeypatch, Precision, "step", 1)  # debug=smoke: 2 batches of 64
    with pytest.raises(Interrupted):
        run(cfg_for("debug=smoke"), run_dir=tmp_path / "a")
    monkeypatch.setattr(Precision, "step", REAL_STEP)
    source = tmp_path / "a" / "checkpoints" / "last.pt"
    with pytest.raises(CheckpointError, match=r"stopped inside epoch 1 \(step 1 of 2\), but this config makes 3 batches"):
        run(cfg_for("debug=smoke", "trainer.batch_size=32", f"trainer.resume={source}"), run_dir=tmp_path / "b")


def test_run_files_follow_the_umask(cfg_for, tmp_path):
    previous = os.umask(0o022)
    try:
        run(cfg_for("debug=smoke"), run_dir=tmp_path / "run")
    finally:
        os.umask(previous)
    for name in ("checkpoints/last.pt", "checkpoints/best.pt", "status.json", "summary.json", "metrics.jsonl"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o644, name


def test_loaders_continue_a_pass_from_its_saved_order(tmp_path):
    split = TensorSplit(torch.arange(40.0).reshape(20, 2), torch.arange(20))
    for loader in (TensorLoader(split, 3, shuffle=True, generator=torch.Generator().manual_seed(1)),
                   TensorLoader(split, 4, streams=True)):
        order = loader.epoch_order()
        whole = [targets for _, targets in loader.batches(order)]
        rest = [targets for _, targets in loader.batches(order.clone().cpu(), start=2)]
        assert len(rest) == len(whole) - 2 and all(torch.equal(a, b) for a, b in zip(rest, whole[2:]))
    # A streamed folder, with random resized crops cut in the workers: the rest of a pass crops alike.
    write_image_folder(tmp_path, per_class=5)
    cfg = validate(compose_config("dataset=image_folder", f"dataset.root={tmp_path}", "dataset.resize=8",
                                  "dataset.cache=none", "dataset.num_workers=0", "dataset.val_fraction=0",
                                  "regularization.augment=imagenet", "trainer.batch_size=2", "model=mlp"))
    loader = build_data(cfg, torch.device("cpu"), torch.Generator().manual_seed(0)).train
    assert isinstance(loader, FileLoader)
    order = loader.epoch_order()
    whole = []
    for batch in loader.batches(order):
        whole.append(batch)
        if len(whole) == 1:  # where a checkpoint after step 1 saves the RNG (flip and jitter run here)
            after_first = torch.get_rng_state()
    torch.set_rng_state(after_first)
    rest = list(loader.batches(order, start=1))
    assert len(rest) == len(whole) - 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, whole[1:]))
    assert sorted(order.tolist()) == list(range(len(loader.split)))
