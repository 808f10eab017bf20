"""Scikit-learn's bundled datasets kept prepared on disk: a run after the first loads its splits (a
few hundred KB) instead of importing scikit-learn, which imports SciPy and cost a second of every
`dlrun debug=smoke` (issue 26: start-up dominated small runs).

One file per loader and arguments under $DLRUN_DATASET_CACHE (else $XDG_CACHE_HOME/dlrun/datasets,
~/.cache/dlrun/datasets), named by a key of everything that made it: the loader's name and
arguments (defaults filled in), scikit-learn's version and the source of the module that prepares
the splits. A new scikit-learn or a changed preparation therefore prepares again rather than read
a stale file, and a cached split is the one scikit-learn's `train_test_split` drew (old runs resume
on the same examples). Files are written atomically (a reader sees a whole file or none); one that
cannot be read is prepared again, and a folder that cannot be written is skipped with a warning:
the cache only saves time.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dlrun.atomic import atomic_write
from dlrun.data.splits import DataSplits, TensorSplit

log = logging.getLogger("dlrun")
CACHE_ROOT_VARIABLE = "DLRUN_DATASET_CACHE"
FORMAT_VERSION = 1


def cache_folder() -> Path:
    """$DLRUN_DATASET_CACHE, else the user's cache: $XDG_CACHE_HOME/dlrun/datasets (~/.cache/dlrun/datasets)."""
    if os.environ.get(CACHE_ROOT_VARIABLE):
        return Path(os.environ[CACHE_ROOT_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlrun" / "datasets"


def prepared_once(loader: Callable[..., DataSplits]) -> Callable[..., DataSplits]:
    """`loader` (a function of scikit-learn's data returning DataSplits), read from the cache when it ran before."""
    signature = inspect.signature(loader)
    module_source = Path(inspect.getsourcefile(loader)).read_bytes()

    @functools.wraps(loader)
    def load(*args: Any, **kwargs: Any) -> DataSplits:
        arguments = signature.bind(*args, **kwargs)
        arguments.apply_defaults()
        try:
            key = _key(loader.__name__, arguments.arguments, module_source)
        except metadata.PackageNotFoundError:  # no scikit-learn: the loader's own import says so
            return loader(*arguments.args, **arguments.kwargs)
        path = cache_folder() / f"{loader.__name__}-{key}.pt"
        splits = _read(path)
        if splits is None:
            splits = loader(*arguments.args, **arguments.kwargs)
            _write(path, splits)
        return splits

    return load


def _key(name: str, arguments: dict[str, Any], module_source: bytes) -> str:
    made_by = {"loader": name, "arguments": arguments, "format": FORMAT_VERSION,
               "scikit-learn": metadata.version("scikit-learn"),  # reads the installed metadata, imports nothing
               "preparation": hashlib.sha256(module_source).hexdigest()}
    return hashlib.sha256(json.dumps(made_by, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _read(path: Path) -> Optional[DataSplits]:
    if not path.exists():
        return None
    try:
        saved = torch.load(path, weights_only=True)
        return DataSplits(train=TensorSplit(*saved["train"]), test=TensorSplit(*saved["test"]),
                          val=TensorSplit(*saved["val"]) if saved["val"] is not None else None,
                          extras=saved["extras"], sequential=saved["sequential"])
    except Exception as error:  # a damaged or foreign file: prepare again, and overwrite it
        log.warning("the prepared dataset %s could not be read (%s); preparing it again", path, error)
        return None


def _write(path: Path, splits: DataSplits) -> None:
    def pair(split: Optional[TensorSplit]) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        return None if split is None else (split.inputs, split.targets)

    saved = {"train": pair(splits.train), "test": pair(splits.test), "val": pair(splits.val),
             "extras": splits.extras, "sequential": splits.sequential}
    try:
        atomic_write(path, lambda temporary: torch.save(saved, temporary))
    except OSError as error:
        log.warning("could not keep the prepared dataset in %s (%s); the next run prepares it again "
                    "(set %s to a writable folder)", path.parent, error, CACHE_ROOT_VARIABLE)
