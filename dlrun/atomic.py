"""Atomic, durable file writes, and the JSON files a run directory holds: a reader, a restarted run
or a machine that lost power sees the old file or the new one, never half of one.

The recipe is the POSIX one: write a temporary file next to the target, fsync it, rename it
over the target (`os.replace` is atomic within one file system), then fsync the directory so
that the rename itself is on disk. A kill -9 at any moment leaves the old file or the new one;
at worst a stray `.<name>.*.tmp` file, which the next write of the same target does not reuse.

The temporary file is created with mode 0o666 filtered by the process umask, as `open()` would,
so checkpoints and run files are as readable as any other file the user writes (tempfile.mkstemp
would make them 0600, hiding them from the rest of a team on a shared cluster).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Create `path` by calling `write` on a temporary file in the same folder, then renaming it.

    If `write` raises (or the process is interrupted), the temporary file is removed and
    `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _create_temporary(path)
    try:
        write(temporary)
        _fsync_file(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically: a reader sees the old file or the new one, never half of one."""
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


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
