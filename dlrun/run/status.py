"""status.json: what a run is doing now, and what each attempt at it did; attempts.jsonl, its history.

A run directory is one run from start to end, whatever stopped it in between: resumed
attempts continue in it (dlrun.run.resume), and status.json lists them. Every write of
status.json also appends the attempt's record to attempts.jsonl, which is never rewritten:
a status.json damaged later is rebuilt from it (`rebuilt_status`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from dlrun.atomic import append_line, read_json, write_json
from dlrun.errors import TrainingDiverged
from dlrun.run.stop_signals import Interrupted

STATUS_FILE = "status.json"
ATTEMPTS_LOG = "attempts.jsonl"
# The storage is full: the space a run set aside (dlrun.run.lock) is given back before a record is retried.
FULL = (errno.ENOSPC, errno.EDQUOT)
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

    def __init__(self, run_dir: Path, fingerprint: Optional[str], overrides: Iterable[str] = (),
                 previous: Optional[dict[str, Any]] = None, when_full: Callable[[], None] = lambda: None) -> None:
        """`previous`: the run's status to continue (default: its status.json); `when_full` frees
        reserved space when a write meets a full disk."""
        self.rank = 0
        self.path = Path(run_dir) / STATUS_FILE
        self.fingerprint = fingerprint
        self.when_full = when_full
        previous = previous if previous is not None else read_status(run_dir)
        same_run = previous is not None and fingerprint is not None and previous.get("config_fingerprint") == fingerprint
        self.attempts: list[dict[str, Any]] = _earlier_attempts(previous) if same_run else []
        now = iso_time(time.time())
        self.started = previous.get("started", now) if same_run else now
        self.attempt: dict[str, Any] = {"started": now, "ended": None, "host": socket.gethostname(),
                                        "pid": os.getpid(), "overrides": list(overrides), "from": None,
                                        "outcome": "running"}
        self.attempts.append(self.attempt)
        self.pid_started = process_start(os.getpid())

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
        status.when_full = lambda: None
        return status

    def continuing_from(self, where: dict[str, Any]) -> None:
        """Record where this attempt starts ({"checkpoint", "epoch", "step", "position"}; the first one
        when several folds continue). An attempt that never calls it started from scratch."""
        if self.attempt["from"] is None:
            self.attempt["from"] = where
            self.write("running")

    def note(self, key: str, value: Any) -> None:
        """Add a fact about this attempt to its record (e.g. the stale lock it took over), written by the next write."""
        self.attempt[key] = value

    def write(self, status: str, **outcome: Any) -> None:
        """Set the status; `outcome` (error, exit_code, signal, epoch, step) describes this attempt's end.

        The attempt's record is appended to attempts.jsonl, then status.json is replaced. On a full
        disk the reserved space is given back and the write tried once more; an OSError naming the
        file is raised when that fails too.
        """
        if self._failure_of_another_process():
            return
        if self.rank:
            outcome["rank"] = self.rank
        now = iso_time(time.time())
        self.attempt["outcome"] = status
        self.attempt["ended"] = None if status == "running" else now
        self.attempt.update({key: value for key, value in outcome.items() if key in ATTEMPT_OUTCOME_KEYS})
        record = {"status": status, "config_fingerprint": self.fingerprint, "started": self.started,
                  "updated": now, "host": self.attempt["host"], "pid": self.attempt["pid"],
                  "pid_started": self.pid_started, **outcome, "attempts": self.attempts}
        try:
            self._store(record)
        except OSError as error:
            if error.errno not in FULL:
                raise
            self.when_full()
            self._store(record)

    def _store(self, record: dict[str, Any]) -> None:
        line = {"config_fingerprint": self.fingerprint, "run_started": self.started, **self.attempt}
        append_line(self.path.with_name(ATTEMPTS_LOG), json.dumps(line, default=str))
        write_json(self.path, record)

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
        status = read_json(Path(run_dir) / STATUS_FILE)
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) else None


def status_damage(run_dir: Path) -> Optional[str]:
    """Why `run_dir`'s status.json cannot be used although it exists (None: absent, or fine)."""
    path = Path(run_dir) / STATUS_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        return f"unreadable: {error}"
    try:
        status = json.loads(text)
    except ValueError as error:
        return f"not JSON: {error}" if text.strip() else "empty"
    if not isinstance(status, dict) or not isinstance(status.get("attempts", []), list):
        return "not a dlrun status (no status record in it)"
    return None


def logged_attempts(run_dir: Path) -> list[dict[str, Any]]:
    """The attempts attempts.jsonl records, in order, each as its last line says (a cut-short line is skipped)."""
    try:
        lines = (Path(run_dir) / ATTEMPTS_LOG).read_text(errors="replace").splitlines()
    except OSError:
        return []
    attempts: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            attempts[(record.get("started"), record.get("host"), record.get("pid"))] = record
    return list(attempts.values())


def rebuilt_status(run_dir: Path, checkpoint_fingerprint: Optional[str]) -> Optional[dict[str, Any]]:
    """A status record for a run whose status.json is damaged or gone: from attempts.jsonl and the
    fingerprint of the config its checkpoint holds. None when neither says which run this is."""
    attempts = logged_attempts(run_dir)
    fingerprint = checkpoint_fingerprint or (attempts[-1].get("config_fingerprint") if attempts else None)
    if fingerprint is None:
        return None
    own = [attempt for attempt in attempts if attempt.get("config_fingerprint") == fingerprint]
    kept = [{key: value for key, value in attempt.items() if key not in ("config_fingerprint", "run_started")}
            for attempt in own]
    latest = kept[-1] if kept else {}
    return {"status": latest.get("outcome", "interrupted"), "config_fingerprint": fingerprint,
            "started": own[0].get("run_started") if own else None, "updated": latest.get("ended"),
            "host": latest.get("host"), "pid": latest.get("pid"), "attempts": kept}


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
    return started is None or process_start(pid) in (None, started)  # a reused pid started later


def iso_time(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))


def process_start(pid: int) -> Optional[int]:
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
