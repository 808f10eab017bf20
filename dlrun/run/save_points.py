"""When training writes last.pt: at epoch ends, on a schedule inside epochs, and on a stop signal.

`SaveSchedule` is the periodic policy (`trainer.save_every_steps`, `trainer.save_every_minutes`):
it is asked after every optimizer step with integer arithmetic and a monotonic clock read, so
it costs no host sync; only the step that saves pays for copying the state to the host.

`SavePoints` is what the training loop calls at its check points. After each step, a pending
stop signal (dlrun.run.stop_signals) or a due periodic save writes the exact mid-epoch position;
during validation a signal saves the "trained, not yet validated" position with the RNG
states of the end of training (evaluation draws no random numbers on the tensor path, so
validating again on resume is exact); during the final test it only stops, since last.pt
already holds the end of training. After a stop it raises `Interrupted`.

On several processes (dlrun.engine.distributed) the processes act on what they agreed, never on a
flag only one of them may have seen: a stop signal and the minutes of the save schedule are
agreed one step later, epoch ends at once, and validation and the final test run to their end
before a stop; the step schedule is the same count everywhere. Every save is collective (the
metric totals and every process's RNG states are gathered) and rank 0 writes it.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from dlrun.engine.distributed import Ranks
from dlrun.engine.position import EpochPosition, check_finite
from dlrun.run import checkpoint
from dlrun.run.checkpoint import BEST, LAST
from dlrun.run.stop_signals import Interrupted, StopSignals

log = logging.getLogger("dlrun")
# Builds the checkpoint dict of the current state: (position inside an epoch or None, RNG snapshot or None).
Snapshot = Callable[[Optional[EpochPosition], Optional[dict[str, Any]]], dict[str, Any]]


class SaveSchedule:
    """Every `every_steps` optimizer steps (counted over the run) and/or every `every_minutes`."""

    def __init__(self, every_steps: Optional[int], every_minutes: Optional[float],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_steps = every_steps
        self.interval_s = every_minutes * 60 if every_minutes else None
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        """Count the minutes from now (after any save, periodic or not)."""
        self.deadline = self.clock() + self.interval_s if self.interval_s is not None else math.inf

    def due(self, global_step: int) -> bool:
        return self.due_by_steps(global_step) or self.due_by_clock()

    def due_by_steps(self, global_step: int) -> bool:
        return self.every_steps is not None and global_step % self.every_steps == 0

    def due_by_clock(self) -> bool:
        return self.clock() >= self.deadline


class SavePoints:
    """Writes `directory/last.pt` (and best.pt) from `snapshot` at the loop's check points.

    `carried()` is the task's state carried between batches, saved with a mid-epoch position;
    `ranks` are the processes of the run (one by default).
    """

    def __init__(self, directory: Path, snapshot: Snapshot, schedule: SaveSchedule, stop: StopSignals,
                 shuffle_generator: torch.Generator, where: str = "", ranks: Ranks = Ranks(),
                 carried: Callable[[], Any] = lambda: None) -> None:
        self.directory = Path(directory)
        self.snapshot = snapshot
        self.shuffle_generator = shuffle_generator
        self.schedule = schedule
        self.stop = stop
        self.where = where  # e.g. "fold 2: " in front of messages
        self.ranks = ranks
        self.carried = carried
        self._trained: Optional[tuple[EpochPosition, dict[str, Any]]] = None  # set while validating

    def before_steps(self, position: EpochPosition) -> None:
        """At the start of an epoch (or of a resumed one): a signal received during setup stops here."""
        signum = self.ranks.agree_now(self.stop.signum)
        if signum:
            self._stop_at(position, signum)

    def after_step(self, position: EpochPosition) -> None:
        """Called by the training loop after every optimizer step; a Python flag and a clock read.

        Several processes act on what all of them posted after the previous step, then post this one's.
        """
        signum, clock_due = self.ranks.verdict(self.stop.signum, self.schedule.due_by_clock())
        if position.finished:  # settle now what is still pending: the epoch's end is one point for all
            signum = self.ranks.agree_now(self.stop.signum) or signum
        if signum:
            self._stop_at(position, signum)
        # The last step of an epoch is saved by end_of_epoch a moment later.
        if not position.finished and (self.schedule.due_by_steps(position.global_step) or clock_due):
            self._save_position(position)
            if self.stop.requested and not self.ranks.distributed:  # the signal arrived during that save
                raise self._interrupted(position)
        self.ranks.post(self.stop.signum, self.schedule.due_by_clock())  # after a save: the clock restarted

    def start_validation(self, position: EpochPosition) -> None:
        """The epoch is trained: a stop during validation saves this position and these RNG states."""
        self._trained = (position, checkpoint.rng_states(self.shuffle_generator))

    def during_validation(self) -> None:
        """Before every validation batch. Several processes finish validating first: end_of_epoch stops them."""
        if self.stop.requested and self._trained is not None and not self.ranks.distributed:
            position, rng = self._trained
            self._stop_at(position, self.stop.signum, rng)

    def end_of_epoch(self, epoch: int, improved: bool) -> None:
        """Epoch `epoch` is validated and logged: write last.pt (and best.pt), then honour a stop."""
        self._trained = None
        rng = self.ranks.gather_rng(checkpoint.rng_states(self.shuffle_generator))
        if self.ranks.is_main:
            state = self.snapshot(None, rng)
            if improved:  # best.pt first: a kill between the two leaves a last.pt that redoes this epoch
                checkpoint.save_checkpoint(self.directory / BEST, state)
            checkpoint.save_checkpoint(self.directory / LAST, state)
        self.schedule.restart()
        signum = self.ranks.agree_now(self.stop.signum)  # also where the others wait for rank 0's save
        if signum:
            self.stop.adopt(signum)
            raise self.stop.interrupted(self._message(f"after epoch {epoch}", "last.pt holds it"),
                                        epoch=epoch + 1, step=0)

    def during_test(self) -> None:
        """The final test: last.pt already holds the end of training, so a stop only stops.

        Several processes finish the test first; the run then ends as interrupted (dlrun.train.run).
        """
        if self.stop.requested and not self.ranks.distributed:
            raise self.stop.interrupted(self._message("during the final test",
                                                      "training is complete; resuming runs the test again"))

    def _stop_at(self, position: EpochPosition, signum: int, rng: Optional[dict[str, Any]] = None) -> None:
        self.stop.adopt(signum)
        log.info("%s%s received: saving %s to last.pt and stopping", self.where, self.stop.name,
                 position.describe())
        self._save_position(position, rng)
        raise self._interrupted(position)

    def _save_position(self, position: EpochPosition, rng: Optional[dict[str, Any]] = None) -> None:
        """Write `position` to last.pt; with several processes every one of them takes part."""
        complete = position if position.finished else replace(position, carried=self.carried())
        totals = self.ranks.totals(complete)
        check_finite(totals)  # never save a diverged state: last.pt keeps the last finite one
        rng = self.ranks.gather_rng(rng if rng is not None else checkpoint.rng_states(self.shuffle_generator))
        if self.ranks.is_main:
            checkpoint.save_checkpoint(self.directory / LAST, self.snapshot(totals, rng))
        position.saved_step = position.step
        self.schedule.restart()

    def _interrupted(self, position: EpochPosition) -> Interrupted:
        extra = f" (and {self.stop.repeats} more signal(s) while stopping, ignored)" if self.stop.repeats else ""
        return self.stop.interrupted(self._message(f"at {position.describe()}", f"last.pt holds this position{extra}"),
                                     epoch=position.epoch, step=position.step)

    def _message(self, where: str, what: str) -> str:
        return f"{self.where}stopped by {self.stop.name} {where}; {what}"
