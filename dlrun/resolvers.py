"""OmegaConf resolvers used by the YAML groups (`${dlrun.name:...}`).

They are registered on import of `dlrun`, so both the CLI and Hydra's compose API see them.
"""

from __future__ import annotations

import re

from omegaconf import OmegaConf


def image_shape(channels: int, stored_size: int, resize: int | None) -> list[int]:
    """(C, H, W) the model sees: the resize target when set, else the stored size."""
    size = stored_size if resize is None else resize
    return [int(channels), int(size), int(size)]


def suffix(name: str | None) -> str:
    """`_name` for a run directory, or nothing when the run has no name."""
    return f"_{safe_name(name)}" if name else ""


def safe_name(text: str | None) -> str:
    """A file-system-safe version of an override string such as `optimizer=adam,seed=1`."""
    text = (text or "").replace("/", "-")
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:200]


OmegaConf.register_new_resolver("dlrun.image_shape", image_shape, replace=True)
OmegaConf.register_new_resolver("dlrun.suffix", suffix, replace=True)
OmegaConf.register_new_resolver("dlrun.safe_name", safe_name, replace=True)
