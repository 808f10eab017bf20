"""Runs that survive preemption, through the installed `dlrun`: real signals sent from outside at exact
points (tests/helpers/pausing.py holds the process there until the signal is sent), then resumed in place.

Every resumed run must equal the uninterrupted one bitwise (CPU, 1 thread): weights, every logged
metric (timings aside), TensorBoard's points and the test result, in one run directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import DLRUN, TIMINGS, only_run_dir, read_json, run_cli, wait_for
from dlrun.run.status import effective_status

HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
# 3 epochs of 6 steps (96 digits, batch 16), 6 validation and 6 test batches; dropout and
# shuffling draw random numbers, so only a complete position and every RNG resume exactly.
BASE = ("model=mlp", "model._target_=pausing.PausingMLP", "model.hidden=[32]", "regularization.dropout=0.3",
        "optimizer=momentum", "optimizer.lr=0.05", "trainer.batch_size=16", "dataset.subset=96", "trainer.epochs=3",
        "device.num_threads=1")
ENV = {"PYTHONPATH": HELPERS_DIR}
TIMEOUT = 300


class Outcome:
    """What a finished run directory holds, timings left out."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        self.metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
                        for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        events = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
        events.Reload()
        self.scalars = {tag: [(event.step, event.value) for event in events.Scalars(tag)]
                        for tag in events.Tags()["scalars"] if tag not in TIMINGS}
        self.test = read_json(run_dir / "summary.json")["test"]

    def assert_equals(self, other: "Outcome") -> None:
        assert self.weights.keys() == other.weights.keys()
        for name in self.weights:
            assert torch.equal(self.weights[name], other.weights[name]), name
        assert self.metrics == other.metrics
        for tag, points in self.scalars.items():  # one TensorBoard run: each step once, in order
            steps = [step for step, _ in points]
            assert steps == sorted(set(steps)), (tag, steps)
        assert self.scalars == other.scalars
        assert self.test == other.test


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Outcome:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*BASE, cwd=cwd, env=ENV, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    return Outcome(only_run_dir(cwd / "outputs"))


def run_with_pauses(cwd: Path, *args: str, stops: list[tuple[str, signal.Signals | None]],
                    pauses: Path) -> subprocess.CompletedProcess:
    """Run dlrun; at each pause point in turn send that signal to the paused process, then let it go on."""
    pauses.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    environment.update(ENV, PYTHONUNBUFFERED="1", DLRUN_TEST_PAUSE=",".join(point for point, _ in stops),
                       DLRUN_TEST_PAUSE_DIR=str(pauses))
    process = subprocess.Popen([str(DLRUN), *args], cwd=cwd, env=environment, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for point, signum in stops:
            marker = wait_for(pauses / f"paused-{point}", process, TIMEOUT)
            if signum is not None:
                os.kill(int(marker.read_text()), signum)
            (pauses / f"go-{point}").touch()
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)



@pytest.mark.slow
def test_kill_9_and_signals_at_every_stage_then_resume_give_one_bitwise_equal_run(tmp_path, uninterrupted):
    cwd, pauses = tmp_path, tmp_path / "pauses"
    # 1. kill -9 inside the save at the end of epoch 2, after epoch 2 was logged: last.pt is the
    #    periodic save at step 8 (epoch 2, step 2), so the resume must drop epoch 2's line and points.
    killed = run_with_pauses(cwd, *BASE, "trainer.save_every_steps=4", stops=[("save:4", signal.SIGKILL)],
                             pauses=pauses / "0")
    assert killed.returncode == -signal.SIGKILL
    run_dir = only_run_dir(cwd / "outputs")
    status = read_json(run_dir / "status.json")
    assert status["status"] == "running" and effective_status(status) == "stale"
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (last["position"]["epoch"], last["position"]["step"], last["metrics_lines"]) == (2, 2, 1)
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2

    # 2. SIGTERM in epoch 3, a second one arriving during the save; 3. SIGINT during epoch 3's
    # validation; 4. SIGUSR1 (Slurm's) during the final test; each time `trainer.resume=auto`.
    attempts = [
        [("train:7", signal.SIGTERM), ("save:2", signal.SIGTERM)],  # forward 7: epoch 3, step 3 (saves: epoch 2 end, this)
        [("eval:3", signal.SIGINT)],  # eval 1 is the model summary, 2-7 epoch 3's validation
        [("eval:9", signal.SIGUSR1)],  # epoch 3's validation again (2-7), then the test (8-13)
    ]
    results = [run_with_pauses(cwd, *BASE, "trainer.resume=auto", stops=stops, pauses=pauses / str(n))
               for n, stops in enumerate(attempts, start=1)]
    results.append(run_cli(*BASE, f"trainer.resume={run_dir}", cwd=cwd, env=ENV, timeout=TIMEOUT))

    assert [r.returncode for r in results] == [143, 130, 138, 0], [r.stderr for r in results]
    assert [r.stderr.strip() for r in results[:3]] == [
        "dlrun: interrupted: stopped by SIGTERM at epoch 3, step 3 of 6; last.pt holds this position "
        "(and 1 more signal(s) while stopping, ignored)",
        "dlrun: interrupted: stopped by SIGINT at epoch 3 (trained, not yet validated); last.pt holds this position",
        "dlrun: interrupted: stopped by SIGUSR1 during the final test; training is complete; resuming runs the test again"]
    assert [p.parent for p in (cwd / "outputs").glob("**/.hydra")] == [run_dir]  # no stub directories left

    status = read_json(run_dir / "status.json")
    assert status["status"] == "completed"
    assert [(a["outcome"], a.get("signal")) for a in status["attempts"]] == [
        ("stale", None), ("interrupted", "SIGTERM"), ("interrupted", "SIGINT"), ("interrupted", "SIGUSR1"),
        ("completed", None)]
    assert [a["from"] and (a["from"]["epoch"], a["from"]["step"]) for a in status["attempts"]] == [
        None, (2, 2), (3, 3), (3, 6), (4, 0)]
    assert status["attempts"][1]["overrides"][-1] == "trainer.resume=auto"
    log = (run_dir / "dlrun.log").read_text()
    assert log.count("resuming from") == 4 and log.count("epoch 3/3") == 1
    assert "SIGINT received: saving epoch 3 (trained, not yet validated) to last.pt and stopping" in log

    Outcome(run_dir).assert_equals(uninterrupted)


@pytest.mark.slow
def test_a_requeued_submitit_job_continues_in_place(tmp_path, uninterrupted):
    """SIGUSR2 is submitit's preemption signal: dlrun saves, then submitit's own handler requeues the
    job (submitit_local restarts it, as Slurm would), and the job continues in its directory."""
    result = run_with_pauses(tmp_path, "-m", "hydra/launcher=submitit_local", "seed=0", *BASE,
                             stops=[("train:8", signal.SIGUSR2)], pauses=tmp_path / "p")
    assert result.returncode == 0, result.stderr
    job_dirs = [p.parent for p in (tmp_path / "outputs" / "multirun").glob("*/*/*/status.json")]
    assert len(job_dirs) == 1
    status = read_json(job_dirs[0] / "status.json")
    assert status["status"] == "completed"
    assert [(a["outcome"], a.get("signal"), a["from"] and a["from"]["step"]) for a in status["attempts"]] == [
        ("interrupted", "SIGUSR2", None), ("completed", None, 2)]
    assert status["attempts"][0]["pid"] != status["attempts"][1]["pid"]  # a new process: the requeued job
    Outcome(job_dirs[0]).assert_equals(uninterrupted)


@pytest.mark.slow
def test_sigterm_stops_a_sweep_after_the_current_jobs_checkpoint_and_sweep_resume_finishes_it(tmp_path):
    sweep = ("-m", "seed=0,1", *BASE, "trainer.epochs=2")
    stopped = run_with_pauses(tmp_path, *sweep, stops=[("train:3", signal.SIGTERM)], pauses=tmp_path / "p")
    assert stopped.returncode == 143, stopped.stderr
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    (job,) = [d for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]  # job 1 never started
    assert job.name.startswith("0_")
    assert read_json(job / "status.json")["status"] == "interrupted"
    assert f"continue with: the same dlrun -m command with sweep.resume={sweep_dir.relative_to(tmp_path)}" in stopped.stdout

    finished = run_cli(*sweep, f"sweep.resume={sweep_dir}", cwd=tmp_path, env=ENV, timeout=TIMEOUT)
    assert finished.returncode == 0, finished.stderr
    summary = read_json(sweep_dir / "summary.json")
    assert summary["completed"] == 2 and summary["failed"] == 0
    assert [json.loads(line)["epoch"] for line in (job / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]
    attempts = read_json(job / "status.json")["attempts"]
    assert [(a["outcome"], a["from"] and (a["from"]["epoch"], a["from"]["step"])) for a in attempts] == [
        ("interrupted", None), ("completed", (1, 3))]
