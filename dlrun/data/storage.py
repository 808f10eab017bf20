"""Where downloaded datasets live, and the one-line error when their files are not there."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from dlrun.errors import DataError

# Set DLRUN_DATA to keep every downloaded dataset in one place (a shared disk, a cluster scratch).
DATA_ROOT_VARIABLE = "DLRUN_DATA"


def default_data_root() -> str:
    """$DLRUN_DATA, else ~/.cache/dlrun/data: the default `dataset.root` of downloading datasets."""
    return os.environ.get(DATA_ROOT_VARIABLE) or str(Path.home() / ".cache" / "dlrun" / "data")


def missing_files(folder: Path, names: Iterable[str]) -> list[str]:
    return [name for name in names if not (folder / name).is_file()]


def describe_missing(missing: list[str], names: Iterable[str]) -> str:
    return "files not found" if len(missing) == len(list(names)) else f"missing {', '.join(missing)}"


def files_error(dataset: str, folder: Path, names: Iterable[str], problem: str, source: str = "") -> DataError:
    """`<dataset>: <problem>; expected <files> in <folder> ...` — says what to put where."""
    where = f"; download them from {source}" if source else ""
    return DataError(f"{dataset}: {problem}; expected {', '.join(names)} in {folder}{where} and place them there "
                     f"(or set dataset.root / ${DATA_ROOT_VARIABLE}; dataset.download=true fetches them)")
