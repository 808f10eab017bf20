"""The training device and how PyTorch uses it: threads, cuDNN, determinism, memory format, compile."""

from __future__ import annotations

import logging
import os
from typing import Callable

import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.errors import ConfigError

log = logging.getLogger("dlrun")


def select_device(kind: str) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is an error, not a fallback."""
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=cpu or device=auto")
    return torch.device(kind)


def configure_backends(device_cfg: DictConfig) -> None:
    """Process-wide settings; call before the first CUDA operation (cuBLAS reads its env var once)."""
    if device_cfg.num_threads is not None:
        torch.set_num_threads(device_cfg.num_threads)
    torch.backends.cudnn.benchmark = bool(device_cfg.cudnn_benchmark) and not device_cfg.deterministic
    torch.use_deterministic_algorithms(bool(device_cfg.deterministic))
    if device_cfg.deterministic:
        # cuBLAS is only reproducible with a fixed workspace (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log.info("deterministic algorithms on (CUBLAS_WORKSPACE_CONFIG=%s, cudnn.benchmark off)",
                 os.environ["CUBLAS_WORKSPACE_CONFIG"])


def prepare_model(model: nn.Module, device_cfg: DictConfig) -> nn.Module:
    """Memory format and compilation. Returns the module to call; `model` keeps the weights to save."""
    if device_cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    if device_cfg.compile:
        return torch.compile(model, mode=device_cfg.compile_mode)
    return model


def channels_last_transform(enabled: bool) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """Batch transform giving image batches the NHWC layout the channels_last model expects."""
    if not enabled:
        return None

    def to_channels_last(batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch

    return to_channels_last
