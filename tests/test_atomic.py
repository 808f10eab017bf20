"""atomic_write: the new file appears whole, or the old one stays and no temporary file is left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from dlrun.atomic import atomic_write


def test_the_file_is_replaced_whole_and_no_temporary_remains(tmp_path):
    target = tmp_path / "nested" / "state.txt"
    atomic_write(target, lambda temporary: temporary.write_text("first"))
    atomic_write(target, lambda temporary: temporary.write_text("second"))
    assert target.read_text() == "second"
    assert [p.name for p in target.parent.iterdir()] == ["state.txt"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "state.txt"
    target.write_text("old")

    def fail_halfway(temporary):
        temporary.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_follow_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write(tmp_path / "file", lambda temporary: temporary.write_text("x"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "file").stat().st_mode) == 0o666 & ~umask


def test_the_file_is_fsynced_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(handle):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{handle}")))
        real_fsync(handle)

    def replace(source, target):
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    atomic_write(tmp_path / "state.txt", lambda temporary: temporary.write_text("x"))
    (kind1, synced_file), (kind2, replaced), (kind3, synced_dir) = events
    assert (kind1, kind2, kind3) == ("fsync", "replace", "fsync")
    assert Path(synced_file).name.startswith(".state.txt.") and synced_file.endswith(".tmp")
    assert replaced == str(tmp_path / "state.txt") and synced_dir == str(tmp_path)
