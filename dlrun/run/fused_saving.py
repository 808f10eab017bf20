"""When a fused group writes its members' last.pt and best.pt, and how it honours a stop signal.

dlrun.run.save_points.SavePoints for a group: the same check points (after every step, during
validation and the final test, at epoch ends) and the same schedule (`trainer.save_every_steps`,
`trainer.save_every_minutes`), applied to every member that still trains. A stop signal saves
every such member's exact position to its own last.pt (the solo format: it resumes alone or with
its group), then raises `Interrupted`; each member's status.json then says `interrupted`. A member
whose loss became non-finite is never saved: it is marked diverged (its last.pt keeps its last
finite state) and leaves the group's training.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

from dlrun.engine.fused.loop import GroupPosition
from dlrun.engine.position import check_finite
from dlrun.errors import TrainingDiverged
from dlrun.run.fused_members import DIVERGED, Member
from dlrun.run.save_points import SaveSchedule
from dlrun.run.stop_signals import Interrupted, StopSignals

log = logging.getLogger("dlrun")


class GroupSaves:
    """Writes the training members' checkpoints at the fused loop's check points; `masked()` is called
    whenever a member leaves the training (it diverged), so the loop masks it."""

    def __init__(self, members: Sequence[Member], schedule: SaveSchedule, stop: StopSignals,
                 masked: Callable[[], None]) -> None:
        self.members = list(members)
        self.schedule = schedule
        self.stop = stop
        self.masked = masked
        self._trained: Optional[tuple[GroupPosition, list[dict[str, Any]]]] = None  # set while validating

    def before_steps(self, position: GroupPosition) -> None:
        if self.stop.requested:
            self._stop_at(position)

    def after_step(self, position: GroupPosition) -> None:
        """After every fused step: a Python flag and a clock read; saves on a signal or when due."""
        if self.stop.requested:
            self._stop_at(position)
        # The last step of an epoch is saved by end_of_epoch a moment later.
        if not position.finished and self.schedule.due(position.global_step):
            self._save_positions(position)

    def start_validation(self, position: GroupPosition) -> None:
        """The epoch is trained: a stop during validation saves this position with these RNG states."""
        self._trained = (position, [member.rng() for member in self.members])

    def during_validation(self) -> None:
        if self.stop.requested and self._trained is not None:
            self._stop_at(*self._trained)

    def end_of_epoch(self, epoch: int, improved: dict[int, bool]) -> None:
        """Epoch `epoch` is validated and logged: last.pt (and best.pt where `improved[slot]`) of the members
        that trained it; then a pending stop signal stops the group."""
        self._trained = None
        for member in self.members:
            if member.slot in improved:
                member.save(member.snapshot(None, member.rng()), best=improved[member.slot])
        self.schedule.restart()
        if self.stop.requested:
            raise self.stop.interrupted(f"stopped by {self.stop.name} after epoch {epoch}; last.pt holds it",
                                        epoch=epoch + 1, step=0)

    def during_test(self) -> None:
        if self.stop.requested:
            raise self.stop.interrupted(f"stopped by {self.stop.name} during the final test; "
                                        "training is complete; resuming runs the test again")

    def _stop_at(self, position: GroupPosition, rngs: Optional[list[dict[str, Any]]] = None) -> None:
        training = sum(member.trains for member in self.members)
        log.info("%s received: saving %s of %d jobs to their last.pt and stopping", self.stop.name,
                 position.describe(), training)
        self._save_positions(position, rngs)
        raise self._interrupted(position)

    def _save_positions(self, position: GroupPosition, rngs: Optional[list[dict[str, Any]]] = None) -> None:
        """Each training member's position to its last.pt; a diverged one is marked instead (never saved)."""
        for member in self.members:
            if not member.trains:
                continue
            own = position.member(member.slot)
            try:
                check_finite(own)
            except TrainingDiverged as error:
                diverge(member, error)
                self.masked()
                continue
            rng = rngs[member.slot] if rngs is not None else member.rng()
            member.save(member.snapshot(own, rng))
        position.saved_step = position.step
        self.schedule.restart()

    def _interrupted(self, position: GroupPosition) -> Interrupted:
        extra = f" (and {self.stop.repeats} more signal(s) while stopping, ignored)" if self.stop.repeats else ""
        return self.stop.interrupted(f"stopped by {self.stop.name} at {position.describe()}; "
                                     f"last.pt holds this position{extra}", epoch=position.epoch, step=position.step)


def diverge(member: Member, error: TrainingDiverged) -> None:
    """A member whose loss became non-finite: status diverged, out of the group's training."""
    log.warning("job %d diverged: %s", member.number, error)
    member.end(DIVERGED, error)
