"""What a run directory says about itself: status.json, summary.json and their ingredients.

A run directory is one run from start to end, whatever stopped it in between: resumed
attempts continue in it (dlrun.resume), and status.json lists them.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from omegaconf import DictConfig, OmegaConf

import dlrun
from dlrun.atomic import atomic_write
from dlrun.errors import TrainingDiverged
from dlrun.preemption import Interrupted

STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
# Keys that may change between a run and its continuation without making it another experiment.
RESUME_INSENSITIVE_KEYS = ("trainer.resume", "trainer.epochs", "trainer.save_every_steps", "trainer.save_every_minutes",
                           "trainer.log_grad_norms", "output_root", "name", "sweep.resume", "device.dist_timeout_min")
# What status.json records of how each attempt ended.
ATTEMPT_OUTCOME_KEYS = ("error", "exit_code", "signal", "epoch", "step", "rank")
# What a run writes while training; cleared (with any fold_*/) before a run starts again from scratch.
TRAINING_OUTPUTS = ("tb", "checkpoints", "metrics.jsonl", SUMMARY_FILE, "model_summary.txt", "data.json", "curves.png")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically: a reader sees the old file or the new one, never half of one."""
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved experiment config, blind to the keys a continuation may change."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    for dotted in RESUME_INSENSITIVE_KEYS:
        section, _, key = dotted.rpartition(".")
        (container.get(section, {}) if section else container).pop(key, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStatus:
    """status.json: what the run is doing now, and what each attempt at it did.

    Top level: `status` (running → completed | failed | diverged | interrupted), the
    `config_fingerprint`, `started` (the first attempt), `updated`, the `host` and `pid` of the
    process writing it (so a `running` run whose process is gone reads as stale), and the
    outcome of the latest attempt (`error`, `exit_code`; `signal`, `epoch`, `step` for a stop).
    `attempts` lists every attempt in this directory: started, ended, host, pid, overrides,
    `from` (the checkpoint position it continued from, null for a fresh start) and outcome.

    A run on several processes (dlrun.distributed): rank 0 writes it; another process whose own
    failure ends the run records it through `RunStatus.of_attempt` (its error starts with
    `rank <n>:`, and `rank` says which). A failure one process recorded is never overwritten by
    another: the others fail after it, at their next exchange with the process that is gone.
    """

    def __init__(self, run_dir: Path, fingerprint: Optional[str], overrides: Iterable[str] = ()) -> None:
        self.rank = 0
        self.path = Path(run_dir) / STATUS_FILE
        self.fingerprint = fingerprint
        previous = read_status(run_dir)
        same_run = previous is not None and fingerprint is not None and previous.get("config_fingerprint") == fingerprint
        self.attempts: list[dict[str, Any]] = _earlier_attempts(previous) if same_run else []
        now = _iso(time.time())
        self.started = previous.get("started", now) if same_run else now
        self.attempt: dict[str, Any] = {"started": now, "ended": None, "host": socket.gethostname(),
                                        "pid": os.getpid(), "overrides": list(overrides), "from": None,
                                        "outcome": "running"}
        self.attempts.append(self.attempt)
        self.pid_started = _process_start(os.getpid())

    @classmethod
    def of_attempt(cls, run_dir: Path, rank: int) -> Optional["RunStatus"]:
        """The attempt rank 0 started in `run_dir`, for process `rank` to record its failure (None: no status.json)."""
        current = read_status(run_dir)
        if not current or not current.get("attempts"):
            return None
        status = cls.__new__(cls)
        status.rank, status.path, status.fingerprint = rank, Path(run_dir) / STATUS_FILE, current["config_fingerprint"]
        status.attempts, status.started = current["attempts"], current["started"]
        status.attempt, status.pid_started = status.attempts[-1], current.get("pid_started")
        return status

    def continuing_from(self, where: dict[str, Any]) -> None:
        """Record where this attempt starts ({"checkpoint", "epoch", "step", "position"}; the first one
        when several folds continue). An attempt that never calls it started from scratch."""
        if self.attempt["from"] is None:
            self.attempt["from"] = where
            self.write("running")

    def write(self, status: str, **outcome: Any) -> None:
        """Set the status; `outcome` (error, exit_code, signal, epoch, step) describes this attempt's end."""
        if self._failure_of_another_process():
            return
        if self.rank:
            outcome["rank"] = self.rank
        now = _iso(time.time())
        self.attempt["outcome"] = status
        self.attempt["ended"] = None if status == "running" else now
        self.attempt.update({key: value for key, value in outcome.items() if key in ATTEMPT_OUTCOME_KEYS})
        write_json(self.path, {"status": status, "config_fingerprint": self.fingerprint, "started": self.started,
                               "updated": now, "host": self.attempt["host"], "pid": self.attempt["pid"],
                               "pid_started": self.pid_started, **outcome, "attempts": self.attempts})

    def ended_by(self, error: BaseException) -> None:
        """Record how an exception ended the attempt: interrupted (a signal), diverged, or failed."""
        if isinstance(error, Interrupted):
            self.write("interrupted", error=str(error), exit_code=error.exit_code, signal=error.signal_name,
                       epoch=error.epoch, step=error.step)
        elif isinstance(error, KeyboardInterrupt):
            self.write("interrupted", error="interrupted (KeyboardInterrupt); last.pt holds the last save",
                       exit_code=130)
        elif isinstance(error, TrainingDiverged):
            self.write("diverged", error=str(error), exit_code=error.exit_code)
        else:
            rank = f"rank {self.rank}: " if self.rank else ""
            self.write("failed", error=f"{rank}{type(error).__name__}: {error}", exit_code=getattr(error, "exit_code", 1))

    def _failure_of_another_process(self) -> bool:
        """Whether status.json holds a failure of this attempt that another process of the run recorded."""
        current = read_status(self.path.parent) or {}
        attempts = current.get("attempts") or [{}]
        latest = attempts[-1]
        return (current.get("status") == "failed" and current.get("rank", 0) != self.rank
                and (latest.get("started"), latest.get("pid")) == (self.attempt["started"], self.attempt["pid"]))


def read_status(run_dir: Path) -> Optional[dict[str, Any]]:
    """status.json of `run_dir`, or None when there is none (or it cannot be read)."""
    try:
        return read_json(Path(run_dir) / STATUS_FILE)
    except (OSError, ValueError):
        return None


def effective_status(status: dict[str, Any]) -> str:
    """The recorded status, except `stale` for a `running` run whose process is gone from this host."""
    if status.get("status") == "running" and process_alive(status) is False:
        return "stale"
    return status.get("status", "missing")


def process_alive(status: dict[str, Any]) -> Optional[bool]:
    """Whether the process that wrote `status` still runs: None when it ran on another host (unknown)."""
    pid = status.get("pid")
    if status.get("host") != socket.gethostname() or not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, but is it ours? the start time says
        pass
    started = status.get("pid_started")
    return started is None or _process_start(pid) in (None, started)  # a reused pid started later


def completed_summary(run_dir: Path, fingerprint: str, epochs: int) -> Optional[dict[str, Any]]:
    """summary.json of `run_dir` if it completed this config with nothing left to train, else None.

    Nothing is left when it trained `epochs` epochs (or more), or early stopping ended it.
    """
    status = read_status(run_dir)
    try:
        summary = read_json(Path(run_dir) / SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    if status is None or status.get("status") != "completed" or status.get("config_fingerprint") != fingerprint:
        return None
    finished = summary.get("epochs_completed", 0) >= epochs or summary.get("stopped_early") is not None
    return summary if finished else None


def has_checkpoint(run_dir: Path) -> bool:
    """A last.pt to continue from: the run's own, or (trainer.kfold) any fold's."""
    return last_checkpoint_time(run_dir) is not None


def last_checkpoint_time(run_dir: Path) -> Optional[float]:
    """Modification time of the newest last.pt of the run (or of its folds), None when there is none."""
    paths = [Path(run_dir) / "checkpoints" / "last.pt", *Path(run_dir).glob("fold_*/checkpoints/last.pt")]
    times = [path.stat().st_mtime for path in paths if path.exists()]
    return max(times) if times else None


def clear_training_outputs(run_dir: Path) -> None:
    """Remove an earlier attempt's event files, checkpoints, metrics and folds, so a rerun starts clean."""
    for path in [*(Path(run_dir) / name for name in TRAINING_OUTPUTS), *Path(run_dir).glob("fold_*")]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def environment() -> dict[str, Any]:
    """Versions and the git commit: enough to rerun the experiment later."""
    import torch  # here, so that reading run directories (dlrun-report) does not load torch

    return {
        "dlrun": dlrun.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
    }


def git_commit() -> Optional[str]:
    """The commit of the working directory's repository, if it is one (dirty trees are marked)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def find_latest_run(output_root: Path, fingerprint: str, exclude: Path) -> Optional[Path]:
    """The run under `output_root` with this config and the most recently written checkpoint."""
    candidates = []
    for status_file in Path(output_root).glob(f"**/{STATUS_FILE}"):
        run_dir = status_file.parent
        if run_dir.resolve() == Path(exclude).resolve() or run_dir.name.startswith("fold_"):
            continue
        status = read_status(run_dir)
        saved = last_checkpoint_time(run_dir)
        if status is not None and status.get("config_fingerprint") == fingerprint and saved is not None:
            candidates.append((saved, str(run_dir)))
    return Path(max(candidates)[1]) if candidates else None


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def _process_start(pid: int) -> Optional[int]:
    """When process `pid` started (clock ticks since boot, Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rpartition(")")[2].split()[19])  # field 22, counted after the command name


def _earlier_attempts(status: dict[str, Any]) -> list[dict[str, Any]]:
    """The attempts an existing status.json lists (one, for a file written before attempts were kept).

    One still `running` was killed, or its process died: a live run is never continued.
    """
    attempts = list(status.get("attempts") or [
        {"started": status.get("started"), "ended": status.get("updated"), "host": status.get("host"),
         "pid": status.get("pid"), "overrides": None, "from": None, "outcome": status.get("status")}])
    for attempt in attempts:
        if attempt.get("outcome") == "running":
            attempt["outcome"] = "stale"
    return attempts
