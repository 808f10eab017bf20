"""OmegaConf resolvers of the config itself (`${dlrun.name:...}`): run-directory names and input shapes.

Registered on import of `dlrun` (with the dataset resolvers of dlrun.data.resolvers), so both
the CLI and Hydra's compose API see them.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import OmegaConf

from dlrun.atomic import claim_directory
from dlrun.errors import ConfigError

# The directories this command claimed, by the path asked for: Hydra resolves `hydra.run.dir`
# more than once (and a sweep's job processes get the cached value, as for `${now:...}`).
_claimed: dict[str, str] = {}


def forget_claimed() -> None:
    """A new command starts: a path asked for again (in the same second) is a new run, not the last one's."""
    _claimed.clear()


def image_shape(channels: int, stored_size: int, resize: int | None) -> list[int]:
    """(C, H, W) the model sees: the resize target when set, else the stored size."""
    size = stored_size if resize is None else resize
    return [int(channels), int(size), int(size)]


def suffix(name: str | None) -> str:
    """`_name` for a run directory, or nothing when the run has no name."""
    return f"_{safe_name(name)}" if name else ""


def new_dir(path: str) -> str:
    """A new directory at `path`, or `path_2`, `path_3`, ... when that exists: created here, atomically.

    Two runs started in the same second, on one host or several sharing the file system, get
    two directories: `outputs/<date>/<time>[_<name>]` and `outputs/<date>/<time>[_<name>]_2`.
    """
    if path not in _claimed:
        _claimed[path] = str(claim_directory(Path(path)))
    return _claimed[path]


def sweep_dir(resume: str | None, new_sweep: str) -> str:
    """The multirun directory: `sweep.resume` when set (it must be an earlier sweep's), else a new one (`new_dir`)."""
    if resume in (None, ""):
        return new_dir(new_sweep)
    if not (Path(resume) / "multirun.yaml").is_file():
        raise ConfigError(f"sweep.resume={resume} is not a sweep directory (no multirun.yaml in it)")
    return str(resume)


MAX_NAME = 150  # well under the 255-byte file-name limit, with room for the job number


def safe_name(text: str | None) -> str:
    """A file-system-safe version of an override string such as `optimizer=adam,seed=1`.

    `/` (as in `+experiment=d2l/lenet`) becomes `-`; other unusual characters become `_`.
    A name longer than MAX_NAME keeps its start and ends with a hash of the whole text,
    so two long sweeps' names stay distinct.
    """
    text = text or ""
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text.replace("/", "-"))
    if len(name) > MAX_NAME:
        name = f"{name[:MAX_NAME - 9]}~{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return name


OmegaConf.register_new_resolver("dlrun.image_shape", image_shape, replace=True)
OmegaConf.register_new_resolver("dlrun.suffix", suffix, replace=True)
# Cached (as Hydra caches `now`): the cache travels with the config into a sweep's job processes.
OmegaConf.register_new_resolver("dlrun.sweep_dir", sweep_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.new_dir", new_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("dlrun.safe_name", safe_name, replace=True)
