"""atomic_write: the new file appears whole, or the old one stays and no temporary file is left."""

from __future__ import annotations

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
