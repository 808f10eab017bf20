"""Choosing the training device and CPU threads."""

from __future__ import annotations

from typing import Optional

import torch

from dlrun.errors import ConfigError


def select_device(kind: str) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is an error, not a fallback."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=cpu or device=auto")
    return torch.device(kind)


def configure_threads(num_threads: Optional[int]) -> None:
    """Set intra-op CPU threads when asked; None keeps PyTorch's choice."""
    if num_threads is not None:
        torch.set_num_threads(num_threads)
