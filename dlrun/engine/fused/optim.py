"""Every member's optimizer step on the stacked gradients.

Each member keeps the optimizer (and scheduler) a solo run of its config builds, over its own
parameters, which are views of the stacked tensors (StackedModel.bind_members). Here the members'
gradients are made views of the stacked gradients, so one backward pass fills all of them; gradient
clipping is computed for all members at once (each member's own norm and limit); then every member
that still trains takes its own optimizer's step, with that member's learning rate, momentum, betas
and weight decay, its state kept in the solo checkpoint format: for SGD, Adam and AdamW as one
update of the stacked tensors that rounds as torch's own (dlrun.engine.fused.stacked_updates),
for the other optimizers by each member's `optimizer.step()`.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from dlrun.engine.fused.stacked_updates import stacked_update
from dlrun.engine.fused.stacking import StackedModel


class MemberSteps:
    """The optimizer steps of a stacked model's members; `clips[i]` is member i's max gradient norm (None/0: off)."""

    def __init__(self, stacked: StackedModel, optimizers: Sequence[torch.optim.Optimizer],
                 clips: Sequence[Optional[float]]) -> None:
        self.parameters = stacked.parameters()
        self.optimizers = list(optimizers)
        for parameter in self.parameters:  # kept for the whole run: the members' gradients are views of it
            parameter.grad = torch.zeros_like(parameter)
        for index in range(len(self.optimizers)):
            for own, stacked_parameter in zip(stacked.member_parameters(index), self.parameters):
                own.grad = stacked_parameter.grad[index]
        members = [stacked.member_parameters(index) for index in range(len(self.optimizers))]
        self.update = stacked_update(self.parameters, members, self.optimizers)
        device = self.parameters[0].device
        self.clips = (torch.tensor([clip if clip else math.inf for clip in clips], device=device)
                      if any(clips) else None)

    def zero_grad(self) -> None:
        """Zero the stacked gradients in place (the members' views stay valid)."""
        torch._foreach_zero_([parameter.grad for parameter in self.parameters])

    def clip(self) -> None:
        """Scale each member's gradients to at most its max norm, as nn.utils.clip_grad_norm_ does per run."""
        if self.clips is None:
            return
        grads = [parameter.grad for parameter in self.parameters]
        # [N, P]: each member's row of its parameters' norms, reduced as clip_grad_norm_ reduces its list.
        norms = torch.stack([torch.linalg.vector_norm(grad.flatten(1), dim=1) for grad in grads], dim=1)
        total = torch.linalg.vector_norm(norms, dim=1)
        # max_norm / (total + 1e-6) as torch evaluates a number over a tensor: the reciprocal, times max_norm.
        scale = torch.clamp((total + 1e-6).reciprocal() * self.clips, max=1.0)
        for grad in grads:
            grad.mul_(scale.view(-1, *([1] * (grad.dim() - 1))))

    def step(self, active: Sequence[bool]) -> None:
        """Each member that still trains steps: all at once (SGD, Adam, AdamW), else its own optimizer's step()."""
        if self.update is not None:
            self.update.step(active)
            return
        for optimizer, training in zip(self.optimizers, active):
            if training:
                optimizer.step()
