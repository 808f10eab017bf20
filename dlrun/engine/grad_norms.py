"""Per-layer gradient norms (`trainer.log_grad_norms=true`): d2l 5.4's vanishing and exploding gradients, seen.

After every backward pass the L2 norm of each layer's gradient (the layer's own parameters
together) is added to a sum kept on the device; once per epoch the means are read and logged
to TensorBoard as `grad_norm/<nn>_<layer>`, numbered from the input side so the tags sort by
depth. The gradients are those of the loss as computed, before clipping; with fp16 they are
unscaled first. Nothing of this runs unless it is turned on.

A run resumed inside an epoch averages that epoch over the steps after the resume.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.utils.tensorboard import SummaryWriter

from dlrun.engine.precision import Precision


class GradNorms:
    """Sums of each layer's gradient norm over the steps of an epoch, on the device."""

    def __init__(self, model: nn.Module, precision: Precision) -> None:
        self.precision = precision
        # The layers that own trainable parameters, in the order they were registered (input side first).
        self.layers: list[tuple[str, list[nn.Parameter]]] = []
        for name, module in model.named_modules():
            parameters = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if parameters:
                self.layers.append((name or type(module).__name__, parameters))
        self.sums: Optional[torch.Tensor] = None
        self.steps: Optional[torch.Tensor] = None  # per layer: steps with a finite norm (fp16 skips the others)

    def add(self) -> None:
        """Record the current gradients (call after backward, before the optimizer step); no host sync."""
        norms = torch.stack([_norm(parameters) for _, parameters in self.layers])
        if self.precision.scaler is not None:  # fp16: these are the gradients of the scaled loss
            norms = norms / self.precision.scaler.scale(torch.ones_like(norms[0]))
        finite = torch.isfinite(norms)  # fp16 overflows: the scaler skips those steps, and so do we
        norms = torch.where(finite, norms, torch.zeros_like(norms))
        self.sums = norms if self.sums is None else self.sums + norms
        self.steps = finite.float() if self.steps is None else self.steps + finite.float()

    def write(self, writer: SummaryWriter, epoch: int) -> dict[str, float]:
        """Log the epoch's mean norm of every layer (one host read) and start the next epoch from zero."""
        if self.sums is None:
            return {}
        means = (self.sums / self.steps.clamp(min=1)).tolist()
        self.sums = self.steps = None
        values = {f"grad_norm/{index:02d}_{name}": value for index, ((name, _), value)
                  in enumerate(zip(self.layers, means))}
        for tag, value in values.items():
            writer.add_scalar(tag, value, epoch)
        writer.flush()
        return values


def _norm(parameters: list[nn.Parameter]) -> torch.Tensor:
    """The L2 norm of the parameters' gradients taken together (0 when none has a gradient)."""
    grads = [p.grad.detach().float() for p in parameters if p.grad is not None]
    if not grads:
        return parameters[0].new_zeros((), dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
