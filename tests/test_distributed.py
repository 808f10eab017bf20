"""One run on two processes (CPU, gloo) through the real torchrun (submitit's multi-task jobs: test_sweep.py).

Two processes must train exactly what one process trains: same global batches in the same
order, the same gradient (the last batch, 97 = 6 x 16 + 1 examples, leaves one process with a
placeholder whose loss counts zero), the same metrics. Rank 0 alone writes one run directory;
a checkpoint continues on either number of processes; a signal that reaches one process stops
both at the same step; a failure on one process ends both, recorded in status.json.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import compose_config, only_run_dir, read_json, wait_for
from dlrun.train import run

HELPERS_DIR = str(Path(__file__).parent / "helpers")  # modules named by `_target_` overrides
# 7 steps per epoch (the 7th: one example, on rank 0; rank 1 a placeholder), validation and test
# of 97 examples; momentum, so optimizer state must travel through the checkpoints; a save every
# 4 steps, so saves inside epochs gather the metric totals and both processes' RNG states.
BASE = ("model=mlp", "model.hidden=[32]", "optimizer=momentum", "optimizer.lr=0.05", "trainer.batch_size=16",
        "dataset.subset=97", "trainer.epochs=2", "trainer.save_every_steps=4", "device=cpu", "device.num_threads=1")
TIMINGS = ("examples_per_sec", "epoch_time_s", "run/duration_s")
TIMEOUT = 240


class Outcome:
    """Weights, metrics (timings left out) and the test result of a finished run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.weights = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
        self.metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
                        for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        self.summary = read_json(run_dir / "summary.json")

    def assert_close(self, other: "Outcome") -> None:
        assert self.weights.keys() == other.weights.keys()
        for name, weight in self.weights.items():
            torch.testing.assert_close(weight, other.weights[name], rtol=0, atol=1e-5, msg=name)
        assert [line.keys() for line in self.metrics] == [line.keys() for line in other.metrics]
        for mine, theirs in zip(self.metrics, other.metrics):
            assert mine == pytest.approx(theirs, abs=1e-5)
        assert self.summary["test"] == pytest.approx(other.summary["test"], abs=1e-5)


def in_process(root: Path, *overrides: str) -> Path:
    """A one-process run, as `dlrun` would run it, in this process; the directory it starts (or is resumed in)."""
    run_dir = root / "outputs" / f"one-process-{len(list(root.glob('outputs/*')))}"
    run(compose_config(f"output_root={root / 'outputs'}", *overrides), run_dir=run_dir)
    return run_dir


def torchrun(cwd: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=2 -m dlrun <args>` (the console script is torch.distributed.run)."""
    (cwd / "tmp").mkdir(exist_ok=True)  # where the other process's throwaway Hydra directory goes
    environment = {key: value for key, value in os.environ.items() if key != "HYDRA_FULL_ERROR"}
    environment.update({"PYTHONPATH": HELPERS_DIR, "PYTHONUNBUFFERED": "1", "TMPDIR": str(cwd / "tmp"), **(env or {})})
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "dlrun", *args], cwd=cwd, env=environment, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finished(process: subprocess.Popen) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Outcome:
    """The reference: the same run on one process."""
    return Outcome(in_process(tmp_path_factory.mktemp("one_process"), *BASE))


@pytest.mark.slow
def test_two_processes_train_as_one_a_bad_batch_fails_in_step_and_a_failing_rank_ends_both(tmp_path, one_process):
    # A sweep of four jobs on two processes. Jobs 0 and 1: a batch of 15 cannot be shared by 2
    # processes (both say so, in step, and the sweep goes on); job 2: the run of `one_process`;
    # job 3: rank 1 raises in its 3rd training step, and rank 0 must not wait for it.
    base = [override for override in BASE if not override.startswith("trainer.batch_size=")]
    result = finished(torchrun(tmp_path, "-m", *base, "model._target_=failing_rank.FailingMLP",
                               "trainer.batch_size=15,16", "+model.fail_at=0,3"))
    assert result.returncode != 0
    jobs = sorted((path.parent for path in (tmp_path / "outputs").glob("multirun/*/*/*/status.json")),
                  key=lambda job: job.name)
    assert [job.name.partition("_")[0] for job in jobs] == ["0", "1", "2", "3"]  # rank 0's directories only
    assert not list((tmp_path / "tmp").glob("dlrun-*"))  # rank 1's throwaway Hydra directory is gone
    bad_batch, _, completed, failed = (read_json(job / "status.json") for job in jobs)

    assert bad_batch["status"] == "failed" and bad_batch["exit_code"] == 2
    assert bad_batch["error"] == ("trainer.batch_size=15 does not split evenly over 2 processes (it is the "
                                  "global batch, shared out equally); use a multiple of 2, e.g. 14 or 16")
    assert result.stderr.count("dlrun: error: trainer.batch_size=15") == 2  # once per job: rank 0 says it

    assert completed["status"] == "completed"
    two_processes = Outcome(jobs[2])
    two_processes.assert_close(one_process)
    assert (two_processes.summary["world_size"], two_processes.summary["batch_size_per_rank"]) == (2, 8)
    assert one_process.summary["world_size"] == 1
    # Rank 1 prints nothing: each job's epoch lines once.
    assert result.stdout.count("epoch 1/2") == 2 and (jobs[2] / "dlrun.log").read_text().count("epoch 2/2") == 1

    assert (failed["status"], failed["rank"], failed["exit_code"]) == ("failed", 1, 1)
    assert failed["error"] == "rank 1: RuntimeError: rank 1 fails on purpose at forward 3"
    assert "dlrun: error: RuntimeError: rank 1 fails on purpose at forward 3" in result.stderr


@pytest.mark.slow
def test_a_one_process_checkpoint_continues_on_two_a_signal_to_one_stops_both_and_one_process_finishes(
        tmp_path, one_process):
    pausing = (*BASE, "model._target_=pausing.PausingMLP")
    run_dir = in_process(tmp_path, *pausing, "trainer.epochs=1")  # epoch 1 on one process

    # Two processes continue it; rank 1 alone receives SIGTERM during its 4th step of epoch 2.
    pauses = tmp_path / "pauses"
    pauses.mkdir()
    process = torchrun(tmp_path, *pausing, f"trainer.resume={run_dir}",
                       env={"DLRUN_TEST_PAUSE": "train:4", "DLRUN_TEST_PAUSE_RANK": "1",
                            "DLRUN_TEST_PAUSE_DIR": str(pauses)})
    marker = wait_for(pauses / "paused-train:4", process, TIMEOUT)
    os.kill(int(marker.read_text()), signal.SIGTERM)
    (pauses / "go-train:4").touch()
    stopped = finished(process)
    assert stopped.returncode != 0
    exited = set(re.findall(r"exitcode\s*:\s*143 \(pid: (\d+)\)", stopped.stderr))  # torchrun's report
    assert len(exited) == 2, stopped.stderr  # both processes exited with 128 + SIGTERM
    assert stopped.stderr.count("dlrun: interrupted: stopped by SIGTERM at epoch 2, step 5 of 7") == 1
    status = read_json(run_dir / "status.json")
    assert (status["status"], status["signal"], status["exit_code"], status["epoch"], status["step"]) == (
        "interrupted", "SIGTERM", 143, 2, 5)  # agreed one step after rank 1's signal
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert (last["position"]["step"], last["position"]["global_step"], len(last["rng"]["ranks"])) == (5, 12, 1)
    assert last["position"]["sums"][2] == 5 * 16  # examples of both processes in the saved metric totals
    assert [p for p in (tmp_path / "outputs").iterdir()] == [run_dir]  # continued in place: no new directory
    assert not list((tmp_path / "tmp").glob("dlrun-*"))

    in_process(tmp_path, *pausing, f"trainer.resume={run_dir}")  # one process finishes epoch 2
    Outcome(run_dir).assert_close(one_process)
    status = read_json(run_dir / "status.json")
    assert [attempt["outcome"] for attempt in status["attempts"]] == ["completed", "interrupted", "completed"]
    assert only_run_dir(tmp_path / "outputs") == run_dir
