"""The collector waits while the libraries load, then leaves what they made alone; at exit, everything."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from dlrun.garbage_collector import (
    START_UP_THRESHOLD,
    import_quickly,
    quick_start,
)


@pytest.fixture(autouse=True)
def unfrozen():
    """Give the test process its collector back as it was."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_quick_start_collects_rarely_inside_then_restores_the_thresholds_and_freezes_what_it_made():
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    with quick_start():
        assert gc.get_threshold() == (START_UP_THRESHOLD, *thresholds[1:])
        made = [[index] for index in range(5000)]  # lists: containers the collector tracks
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() >= frozen + len(made)


def test_quick_start_restores_the_thresholds_when_the_imports_fail():
    thresholds = gc.get_threshold()
    with pytest.raises(ImportError), quick_start():
        import a_module_that_does_not_exist  # noqa: F401
    assert gc.get_threshold() == thresholds


def test_freeze_at_exit_freezes_as_the_interpreter_exits_not_before():
    script = """import atexit, gc
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))  # runs after the freeze
from dlrun.garbage_collector import freeze_at_exit
handlers = atexit._ncallbacks()
freeze_at_exit()
freeze_at_exit()  # a second command in the same process: registered once
print("frozen now:", gc.get_freeze_count() > 0, "handlers added:", atexit._ncallbacks() - handlers)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.splitlines() == ["frozen now: False handlers added: 1", "frozen at exit: True"], done.stderr


def test_import_quickly_imports_what_is_missing_and_leaves_a_loaded_process_alone(monkeypatch):
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    frozen = gc.get_freeze_count()
    import_quickly("colorsys", "gc")
    assert "colorsys" in sys.modules and gc.get_freeze_count() > frozen
    gc.unfreeze()
    import_quickly("colorsys", "gc")  # both loaded: a later job of a sweep freezes nothing
    assert gc.get_freeze_count() == 0
