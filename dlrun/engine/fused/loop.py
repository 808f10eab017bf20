"""The fused epoch: forward, loss, backward, step for every member at once; and the fused evaluation.

`train_fused_epoch` is dlrun.engine.loop.train_one_epoch for a stacked model: one batch of every
member per step, one forward and one backward, then each member's own optimizer step. A member
that no longer trains (it diverged or stopped early) is masked: its loss leaves the objective and
its optimizer does not step, while the others go on. As in the solo loop, nothing is read back
from the device per step: `GroupPosition` keeps each member's step losses and batch statistics on
the device, and the caller reads them once per epoch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from dlrun.engine.fused.batches import MemberSplits
from dlrun.engine.fused.layers import SHARED
from dlrun.engine.fused.objectives import MemberObjective, MemberPenalty
from dlrun.engine.fused.optim import MemberSteps
from dlrun.engine.fused.stacking import StackedModel
from dlrun.engine.position import EpochPosition
from dlrun.engine.precision import Precision
from dlrun.engine.schedulers import Scheduler
from dlrun.report.console import with_progress


@dataclass
class GroupPosition(EpochPosition):
    """Where every member stands inside epoch `epoch`: an `EpochPosition` whose `order` holds each member's
    batch order, whose `step_losses` are `[batches, N]` and `sums` `[N, k]`.

    `member(i)` is member i's own position, as its solo run would have it: what its mid-epoch
    checkpoint holds and what `check_finite` reads.
    """

    @classmethod
    def start(cls, epoch: int, splits: MemberSplits, global_step: int, device: torch.device) -> "GroupPosition":
        """The start of an epoch: each member draws its order from its own loader (its shuffling generator)."""
        return cls(epoch=epoch, batches=len(splits), order=splits.epoch_orders(),
                   step_losses=torch.empty(len(splits), splits.members, device=device), global_step=global_step)

    @classmethod
    def of_members(cls, positions: Sequence[Optional[EpochPosition]], device: torch.device) -> "GroupPosition":
        """The members' positions (from their checkpoints; all at the same step) as one. A member without
        one (it stopped training before) takes the first's: it is masked, its rows are never read."""
        first = next(p for p in positions if p is not None)
        positions = [p if p is not None else first for p in positions]
        sums = None if first.sums is None else torch.stack([p.sums.to(device) for p in positions])
        return cls(epoch=first.epoch, batches=first.batches, order=[p.order for p in positions],
                   step_losses=torch.stack([p.step_losses.to(device) for p in positions], dim=1), step=first.step,
                   global_step=first.global_step, sums=sums, seconds=first.seconds, saved_step=first.saved_step)

    def member(self, index: int) -> EpochPosition:
        """Member `index`'s own position (views of the group's tensors)."""
        return EpochPosition(epoch=self.epoch, batches=self.batches, order=self.order[index],
                             step_losses=self.step_losses[:, index], step=self.step, global_step=self.global_step,
                             sums=None if self.sums is None else self.sums[index], seconds=self.seconds_so_far(),
                             saved_step=self.saved_step, clock_start=time.perf_counter())


@dataclass
class FusedTrainer:
    """What a fused step uses: the stacked model, the members' objective, penalties, optimizers and schedulers.

    `active[i]` says whether member i still trains; `active_mask` is the same on the device.
    """

    stacked: StackedModel
    objective: MemberObjective
    steps: MemberSteps
    precision: Precision
    schedulers: list[Optional[Scheduler]]
    active: list[bool]
    penalty: Optional[MemberPenalty] = None
    epochs: int = 1
    active_mask: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.set_active(self.active)

    def set_active(self, active: list[bool]) -> None:
        self.active = list(active)
        device = self.steps.parameters[0].device
        self.active_mask = torch.tensor(self.active, device=device)


def train_fused_epoch(trainer: FusedTrainer, splits: MemberSplits, position: GroupPosition,
                      on_step: Optional[Callable[[GroupPosition], None]] = None) -> list[list[float]]:
    """forward, loss, backward, step for every batch, all members at once; each member's summed statistics
    (one host sync, at the end). The caller checks each member's step losses for divergence."""
    stacked, objective, steps, precision = trainer.stacked, trainer.objective, trainer.steps, trainer.precision
    stacked.train()
    batches = splits.batches(position.order, start=position.step)
    description = f"epoch {position.epoch}/{trainer.epochs} ({splits.members} jobs)"
    for inputs, targets in with_progress(batches, len(splits) - position.step, description):
        if inputs.layout == SHARED:
            targets = targets.expand(splits.members, *targets.shape)
        with precision.autocast():
            outputs = stacked(inputs)
            losses = objective.loss(outputs, targets)
        objectives = losses if trainer.penalty is None else losses + trainer.penalty()
        # A masked member's loss may be NaN: where(), not a product, keeps it out of the sum.
        total = torch.where(trainer.active_mask, objectives, torch.zeros_like(objectives)).sum()
        steps.zero_grad()
        total.backward()
        steps.clip()
        steps.step(trainer.active)
        for scheduler, training in zip(trainer.schedulers, trainer.active):
            if training and scheduler is not None and scheduler.interval == "step":
                scheduler.step()
        with torch.no_grad():
            position.advance(objectives.detach().float(), objective.batch_stats(outputs, targets, losses))
        if on_step is not None:
            on_step(position)
    if position.sums is None:
        return [[] for _ in range(splits.members)]
    return position.sums.tolist()


@torch.no_grad()
def evaluate_members(stacked: StackedModel, splits: MemberSplits, objective: MemberObjective, precision: Precision,
                     on_batch: Optional[Callable[[], None]] = None) -> list[dict[str, float]]:
    """Every member's metrics over its own split, in one pass; `on_batch()` before every batch (a stop check)."""
    stacked.eval()
    sums = None
    for inputs, targets in splits.batches([None] * splits.members):
        if on_batch is not None:
            on_batch()
        if inputs.layout == SHARED:
            targets = targets.expand(splits.members, *targets.shape)
        with precision.autocast():
            outputs = stacked(inputs)
            losses = objective.loss(outputs, targets)
        batch = objective.batch_stats(outputs, targets, losses)
        sums = batch if sums is None else sums + batch
    stacked.train()
    if sums is None:  # an empty split
        return [{} for _ in range(splits.members)]
    return objective.metrics(sums.tolist())
