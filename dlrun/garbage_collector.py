"""The garbage collector at start-up and at exit, where it cost a `dlrun debug=smoke` (0.05 s of
training) about 1.8 s on 2 cores (issue 26).

Python's cyclic collector runs whenever 700 more container objects exist than it last saw, and
then walks every young object; each full collection walks them all. Importing torch, and the
Dynamo that torch.optim imports when the first optimizer is made, creates about a million objects
that live as long as the process: at the default thresholds the collector runs some 1,500 times
while they load (about 1 s), and again at exit, when Python tears the modules down (0.5-1 s).

- `import_quickly(names)` imports a run's libraries under `quick_start()`: collections wait for
  100,000 new objects rather than 700; afterwards the thresholds are restored and what the imports
  made is frozen (`gc.freeze()`): moved to a generation that later collections, during training
  too, do not walk. It is never collected, which costs nothing, as modules live until exit anyway.
  Only a process's first import is done so: a second job of a sweep would freeze the first's leftovers.
- `freeze_at_exit()`, called as a command starts: when the interpreter exits, an atexit handler
  (run after every handler registered later) freezes whatever exists, so the collections at
  shutdown have nothing to walk. Log handlers' flushes and the finalizers of objects freed by
  reference counting run as before; only objects left in reference cycles are not finalized, which
  Python does not promise at exit anyway (dlrun closes its files and writers itself), and the memory
  goes back with the process. A notebook or a test that calls a command in-process is left alone
  until it exits itself.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import sys
from typing import Iterator

# New container objects between young collections while the libraries load (Python's default: 700).
START_UP_THRESHOLD = 100_000
_FREEZE_REGISTERED = False


def import_quickly(*names: str) -> None:
    """Import the modules `names` (libraries that live until exit) under quick_start(), unless they are loaded."""
    missing = [name for name in names if name not in sys.modules]
    if missing:
        with quick_start():
            for name in missing:
                importlib.import_module(name)


@contextlib.contextmanager
def quick_start() -> Iterator[None]:
    """Collect rarely while the block imports the libraries, then freeze what it made."""
    thresholds = gc.get_threshold()
    gc.set_threshold(START_UP_THRESHOLD, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
    gc.freeze()


def freeze_at_exit() -> None:
    """Freeze every object as the interpreter exits (registered once per process)."""
    global _FREEZE_REGISTERED
    if not _FREEZE_REGISTERED:
        atexit.register(gc.freeze)
        _FREEZE_REGISTERED = True
