"""One process writes a run directory at a time: `dlrun.lock`, with the owner's host and pid.

The lock file is created with O_CREAT | O_EXCL, which succeeds for exactly one process, also
between hosts sharing a file system. It holds JSON (host, pid, the process's start time, when
it was taken, the Slurm job) and, after it, RESERVE_BYTES of blank padding: space set aside on
the run's own storage so that the end of an attempt can still be recorded when the disk fills
up (`free_reserve`). A thread refreshes the file's modification time every HEARTBEAT_S seconds.

A lock whose owner is gone is stale and is taken over (the new attempt notes it in status.json):
- its process no longer runs on this host (or its pid now belongs to a later process);
- it was taken by an earlier run of this same Slurm job (a requeued job has the same job id);
- it was taken on another host and has not been refreshed for STALE_AFTER_S seconds.
Taking over is itself guarded by `dlrun.lock.takeover` (O_EXCL again), so two processes that
find the same stale lock cannot both take it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Optional

from dlrun.errors import RunDirectoryError
from dlrun.run.status import iso_time, process_alive, process_start

LOCK_FILE = "dlrun.lock"
RESERVE_BYTES = 64 * 1024
HEARTBEAT_S = 30.0
STALE_AFTER_S = 300.0  # another host's lock not refreshed for this long: its process is gone


class RunLock:
    """The lock of `run_dir`, held by this process from `acquire` to `release`.

    `taken_over` describes the stale lock this one replaced (None when the directory was free).
    """

    def __init__(self, run_dir: Path, owner: dict[str, Any], taken_over: Optional[dict[str, Any]]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.owner = owner
        self.taken_over = taken_over
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="dlrun-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Take the lock of `run_dir` (which must exist), taking over a stale one; RunDirectoryError
        naming the owner when a live process holds it, or when the directory cannot be written."""
        run_dir = Path(run_dir)
        owner = _owner()
        for _ in range(5):  # a lock released or taken over between our looks: look again
            if _create(run_dir / LOCK_FILE, owner):
                return cls(run_dir, owner, None)
            held = read_lock(run_dir)
            if held is None and not _unreadable_for_long(run_dir / LOCK_FILE):
                time.sleep(0.05)  # being written this moment, or just released
                continue
            held = held or {}
            why = stale_reason(held, run_dir / LOCK_FILE)
            if why is None:
                raise RunDirectoryError(f"{run_dir} is in use by {describe_owner(held)} ({run_dir / LOCK_FILE}); "
                                        "wait for it or stop it; one process writes a run directory at a time")
            if _take_over(run_dir / LOCK_FILE, held, owner):
                return cls(run_dir, owner, {**_without_token(held), "why": why})
        raise RunDirectoryError(f"{run_dir}: could not take {LOCK_FILE} (other processes keep taking it)")

    def free_reserve(self) -> None:
        """Give the lock file's reserved space back to the file system (the disk is full: records go first)."""
        try:
            os.truncate(self.path, len(_encoded(self.owner, pad=False)))
        except OSError:
            pass

    def release(self) -> None:
        """Remove the lock (only if it is still ours); stop the heartbeat."""
        self._stop.set()
        if (read_lock(self.run_dir) or {}).get("token") == self.owner["token"]:
            self.path.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except OSError:  # gone (released, or removed by hand): nothing to refresh
                return


def read_lock(run_dir: Path) -> Optional[dict[str, Any]]:
    """The lock of `run_dir` as its owner wrote it; None when there is none (or it cannot be read yet)."""
    try:
        return json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def stale_reason(held: dict[str, Any], path: Path) -> Optional[str]:
    """Why the lock `held` (read from `path`) no longer protects anything; None while its owner may run."""
    if not held:
        return "it cannot be read (a write cut short)"
    job, restart = os.environ.get("SLURM_JOB_ID"), _slurm_restart()
    if job and held.get("slurm_job") == job and (held.get("slurm_restart") or 0) < restart:
        return f"taken by an earlier run of Slurm job {job}, which Slurm ended before requeueing it"
    alive = process_alive(held)
    if alive is False:
        return f"its process {held.get('pid')} is gone from {held.get('host')}"
    if alive is None:
        try:
            quiet = time.time() - path.stat().st_mtime
        except OSError:
            return None
        if quiet > STALE_AFTER_S:
            return f"not refreshed for {quiet:.0f} s by {held.get('host')} (refreshed every {HEARTBEAT_S:.0f} s)"
    return None


def describe_owner(held: dict[str, Any]) -> str:
    job = f", Slurm job {held['slurm_job']}" if held.get("slurm_job") else ""
    return f"pid {held.get('pid')} on {held.get('host')}{job} since {held.get('taken')}"


def _owner() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": process_start(os.getpid()),
            "taken": iso_time(time.time()), "slurm_job": os.environ.get("SLURM_JOB_ID"),
            "slurm_restart": _slurm_restart(), "token": os.urandom(8).hex()}


def _slurm_restart() -> int:
    """How many times Slurm requeued this job (SLURM_RESTART_COUNT; 0 outside Slurm or before a requeue)."""
    value = os.environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def _unreadable_for_long(path: Path, grace_s: float = 10.0) -> bool:
    """Whether a lock file that does not parse has been so for `grace_s` (not one being written now)."""
    try:
        return time.time() - path.stat().st_mtime > grace_s
    except OSError:
        return False


def _encoded(owner: dict[str, Any], pad: bool = True) -> bytes:
    """JSON, then (with `pad`) blanks up to RESERVE_BYTES: still valid JSON, and real blocks on disk."""
    text = json.dumps(owner) + "\n"
    return (text + " " * max(0, RESERVE_BYTES - len(text)) if pad else text).encode()


def _without_token(held: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in held.items() if key != "token"}


def _create(path: Path, owner: dict[str, Any]) -> bool:
    """Create the lock file holding `owner`; False when it exists. A write that fails removes it again."""
    try:
        handle = _open_new(path)
    except FileExistsError:
        return False
    except OSError as error:
        raise RunDirectoryError(f"cannot write in {path.parent} ({error.strerror}): a run directory must be "
                                "writable to run or continue a run (dlrun-eval --out DIR evaluates a read-only run)"
                                ) from None
    try:
        try:
            os.write(handle, _encoded(owner))
        except OSError:  # no room for the reserve: take the lock without it
            os.ftruncate(handle, 0)
            os.lseek(handle, 0, os.SEEK_SET)
            os.write(handle, _encoded(owner, pad=False))
        os.fsync(handle)
    except BaseException:
        os.close(handle)
        path.unlink(missing_ok=True)
        raise
    os.close(handle)
    return True


def _open_new(path: Path) -> int:
    """Create `path` for writing, failing with FileExistsError when it exists (atomic, also over NFS v3+)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)


def _take_over(path: Path, held: dict[str, Any], owner: dict[str, Any]) -> bool:
    """Replace the stale lock `held` by ours, unless another process got there first (False: look again)."""
    guard = path.with_name(path.name + ".takeover")
    try:
        handle = _open_new(guard)
    except FileExistsError:
        try:  # a takeover that died half-way leaves its guard: old enough, it is cleared
            if time.time() - guard.stat().st_mtime > STALE_AFTER_S:
                guard.unlink(missing_ok=True)
        except OSError:
            pass
        time.sleep(0.05)
        return False
    os.close(handle)
    try:
        if (read_lock(path.parent) or {}).get("token") != held.get("token"):
            return False  # released, or taken over by someone else, since we read it
        path.unlink(missing_ok=True)
        return _create(path, owner)
    finally:
        guard.unlink(missing_ok=True)
