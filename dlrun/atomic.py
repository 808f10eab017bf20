"""Atomic, durable file writes, and the JSON files a run directory holds: a reader, a restarted run
or a machine that lost power sees the old file or the new one, never half of one.

The recipe is the POSIX one: write a temporary file next to the target, fsync it, rename it
over the target (`os.replace` is atomic within one file system), then fsync the directory so
that the rename itself is on disk. A kill -9 at any moment leaves the old file or the new one;
at worst a stray `.<name>.<pid>.<hex>.tmp` file, which `remove_temporaries` clears (the next attempt
at a run does, once it holds the run's lock).

A failed write raises an OSError that names the target (a full disk's ENOSPC often comes with no
file name, or wrapped in torch's RuntimeError), so the message says where the space ran out.

The temporary file is created with mode 0o666 filtered by the process umask, as `open()` would,
so checkpoints and run files are as readable as any other file the user writes (tempfile.mkstemp
would make them 0600, hiding them from the rest of a team on a shared cluster).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Callable, Optional

from dlrun.errors import find_cause

# The name of a temporary file `atomic_write` makes: `.<target name>.<pid>.<8 hex>.tmp`.
TEMPORARY = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` by calling `write` on a temporary file in the same folder, then renaming it.

    If `write` raises (or the process is interrupted), the temporary file is removed and
    `path` is left as it was. A failure of the storage is raised as an OSError naming `path`.
    """
    path = Path(path)
    temporary: Optional[Path] = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = _create_temporary(path)
        write(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        if temporary is not None:
            temporary.unlink(missing_ok=True)
        cause = find_cause(error, OSError)  # torch wraps a failed write in RuntimeError
        if cause is not None and cause.errno is not None and cause.filename != str(path):
            raise OSError(cause.errno, os.strerror(cause.errno), str(path)) from error
        raise
    fsync_directory(path.parent)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically: a reader sees the old file or the new one, never half of one."""
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def append_line(path: Path, line: str) -> None:
    """Append one line durably (O_APPEND, fsync): the earlier lines are never rewritten.

    A write cut short (a full disk) leaves at most a partial last line, which readers skip; the
    next line starts on a line of its own.
    """
    handle = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(handle).st_size
        start = b"\n" if size and os.pread(handle, 1, size - 1) != b"\n" else b""
        os.write(handle, start + (line.rstrip("\n") + "\n").encode())
        os.fsync(handle)
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(path)) from error
    finally:
        os.close(handle)


def claim_directory(path: Path) -> Path:
    """Create a new directory at `path`, or at `path_2`, `path_3`, ... when it exists; return it.

    `os.mkdir` either creates the directory or fails, also between hosts sharing a file system,
    so two processes asking for the same path in the same second get two directories.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for number in range(1, 10_000):
        candidate = path if number == 1 else path.with_name(f"{path.name}_{number}")
        try:
            os.mkdir(candidate)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free directory name", str(path))


def remove_temporaries(folder: Path) -> list[Path]:
    """Remove the temporary files a killed `atomic_write` left in `folder`; return them.

    Only for a folder no other process writes (the caller holds its run's lock).
    """
    removed = []
    for entry in Path(folder).glob(".*.tmp"):
        if TEMPORARY.match(entry.name) and entry.is_file():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make the directory's entries (a rename, a new file) durable; a no-op where unsupported."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open directories
        return
    try:
        os.fsync(handle)
    except OSError:  # some file systems (and /proc-like mounts) refuse fsync on directories
        pass
    finally:
        os.close(handle)


def _create_temporary(path: Path) -> Path:
    """A new, empty, uniquely named file next to `path`, with the umask's permissions."""
    while True:
        candidate = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            handle = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(handle)
        return candidate


def _fsync_file(path: Path) -> None:
    handle = os.open(path, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
