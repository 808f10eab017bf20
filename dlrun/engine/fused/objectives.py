"""Each member's loss and batch statistics from the stacked outputs, and its L1 penalty.

`MemberObjective` computes, for the `[N, B, ...]` outputs of a stacked model, what each member's
own task (dlrun.tasks) computes for its outputs alone: the loss `[N]` (each member's mean over its
batch, with its own label smoothing) and the batch statistics `[N, k]` that the epoch sums on the
device. The members' `Task` objects turn the summed statistics into metrics, as in a solo run.
Classification is computed for all members at once; regression by each member's own task on its
slice of the outputs (a few small operations per member: each member keeps its own target scale,
loss and statistics exactly as its solo run computes them). Other tasks run job by job.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from dlrun.engine.fused.layers import Unfusable
from dlrun.engine.fused.stacking import StackedModel
from dlrun.tasks import Classification, Regression, Task
from dlrun.tasks.base import as_float32


class MemberObjective:
    """The members' tasks (one kind, one per member) applied to stacked outputs."""

    def __init__(self, tasks: list[Task]) -> None:
        kinds = {type(task) for task in tasks}
        if len(kinds) != 1 or next(iter(kinds)) not in (Classification, Regression):
            raise Unfusable(f"the task {next(iter(kinds)).__name__} is not fused (classification and regression are)")
        self.tasks = tasks
        self.members = len(tasks)
        self.classification = isinstance(tasks[0], Classification)
        self.smoothing = [getattr(task, "label_smoothing", 0.0) for task in tasks]
        self.smoothing_values = sorted(set(self.smoothing))
        self._chosen: dict[tuple[float, torch.device], torch.Tensor] = {}  # members of each smoothing value

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Each member's mean loss over its batch, `[N]` (`targets`: `[N, B, ...]`)."""
        if not self.classification:  # each member's own task: its target scale, MSE or Huber, as its solo run
            return torch.stack([task.loss(out, goal) for task, out, goal in zip(self.tasks, outputs, targets)])
        logits, labels = outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1)
        losses = None
        for value in self.smoothing_values:  # usually one value for the whole group
            member_losses = self._cross_entropy(logits, labels, value)
            if losses is None:
                losses = member_losses
            else:
                losses = torch.where(self._members_with(value, losses.device), member_losses, losses)
        return losses

    def _members_with(self, smoothing: float, device: torch.device) -> torch.Tensor:
        """`[N]` bool: the members whose label smoothing is `smoothing` (made once per device)."""
        key = (smoothing, device)
        if key not in self._chosen:
            self._chosen[key] = torch.tensor([value == smoothing for value in self.smoothing], device=device)
        return self._chosen[key]

    def _cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
        """Each member's F.cross_entropy(reduction="mean"), in the order of operations of ATen's own, so that the
        gradients round as a solo run's: the mean of the log-likelihood terms, and with label smoothing the mean
        of the smoothing terms, combined as (1 - ε)·nll + smooth·(ε / classes)."""
        if not smoothing:
            return F.cross_entropy(logits, labels, reduction="none").view(self.members, -1).mean(dim=1)
        log_probabilities = F.log_softmax(logits, dim=-1)
        nll = F.nll_loss(log_probabilities, labels, reduction="none").view(self.members, -1).mean(dim=1)
        smooth = (-log_probabilities.sum(dim=-1)).view(self.members, -1).mean(dim=1)
        return (1 - smoothing) * nll + smooth * (smoothing / logits.shape[-1])

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor) -> torch.Tensor:
        """What each member's task sums per batch, `[N, k]` (dlrun.tasks: loss x examples, then its counts)."""
        examples = targets.shape[1]
        count = torch.full((self.members,), float(examples), device=outputs.device)
        if self.classification:
            correct = (outputs.argmax(dim=-1) == targets).sum(dim=1, dtype=torch.float32)
            return torch.stack([as_float32(losses) * examples, correct, count], dim=1)
        return torch.stack([task.batch_stats(out, goal, loss)
                            for task, out, goal, loss in zip(self.tasks, outputs, targets, losses)])

    def metrics(self, sums: list[list[float]]) -> list[dict[str, float]]:
        """Each member's metrics from its summed statistics, by its own task."""
        return [task.metrics(row) for task, row in zip(self.tasks, sums)]


class MemberPenalty:
    """Each member's L1 term λᵢ·Σ|w| over the parameters weight decay acts on, `[N]` (dlrun.engine.optim)."""

    def __init__(self, stacked: StackedModel, strengths: list[float], decay_bias_and_norm: bool) -> None:
        # A stacked tensor is [N, *shape]: a member's parameter of dim > 1 is a weight matrix or kernel.
        self.parameters = [p for p in stacked.parameters() if decay_bias_and_norm or p.dim() > 2]
        self.strengths = torch.tensor(strengths, device=self.parameters[0].device if self.parameters else None)

    def __call__(self) -> torch.Tensor:
        sums = torch.stack([p.abs().flatten(1).sum(dim=1) for p in self.parameters]).sum(dim=0)
        return self.strengths * sums


def member_penalty(stacked: StackedModel, strengths: list[float], decay_bias_and_norm: bool) -> Optional[MemberPenalty]:
    """None when no member has an L1 term."""
    return MemberPenalty(stacked, strengths, decay_bias_and_norm) if any(strengths) else None
