"""Mixed precision for the training step: autocast, and a gradient scaler for fp16.

The loop calls `autocast()` around forward and loss, then `backward(loss)` and
`step(optimizer, ...)`; with `amp=off` these are plain PyTorch calls.
"""

from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Iterable, Optional

import torch
from torch import nn

from dlrun.errors import ConfigError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """`amp` is off, bf16 (no scaler needed: bf16 has fp32's exponent range) or fp16 (scaled)."""

    def __init__(self, amp: str, device: torch.device) -> None:
        if amp == "fp16" and device.type != "cuda":
            raise ConfigError("device.amp=fp16 needs a CUDA device; on the CPU use device.amp=bf16 or off")
        self.amp = amp
        self.device = device
        self.dtype = AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> ContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer, parameters: Iterable[nn.Parameter],
             grad_clip: Optional[float]) -> None:
        """Clip (on unscaled gradients) and step; with fp16 the scaler skips steps with inf/NaN grads."""
        if self.scaler is None:
            if grad_clip:
                nn.utils.clip_grad_norm_(parameters, grad_clip)
            optimizer.step()
            return
        if grad_clip:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> Optional[dict[str, Any]]:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: Optional[dict[str, Any]]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
