"""status.json: what a run is doing now, and what each attempt at it did.

A run directory is one run from start to end, whatever stopped it in between: resumed
attempts continue in it (dlrun.run.resume), and status.json lists them.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Optional

from dlrun.atomic import read_json, write_json
from dlrun.errors import TrainingDiverged
from dlrun.run.stop_signals import Interrupted

STATUS_FILE = "status.json"
# What status.json records of how each attempt ended.
ATTEMPT_OUTCOME_KEYS = ("error", "exit_code", "signal", "epoch", "step", "rank")


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
