"""Stopping a run cleanly when the machine is taken back: SIGTERM, SIGINT, SIGUSR1, SIGUSR2.

Slurm, Kubernetes and `kill` send SIGTERM before they take a machine back, Slurm's `--signal`
usually sends SIGUSR1, submitit uses SIGUSR2 for preemption and time limits, and Ctrl-C is
SIGINT. While `StopSignals` is active, each of them only records itself; the training loop
polls `requested` (a plain Python attribute: no host sync) after each optimizer step, between
evaluation batches and before the first step, writes the exact position to last.pt, and raises
`Interrupted`, which the CLI turns into exit code 128 + the signal number (143, 130, 138, 140).

A repeated signal while a stop is under way is counted and otherwise ignored: torchrun, srun
and shell wrappers often forward a signal the process group has already received, and the
save it would cut short is the one thing worth waiting for. `kill -9` still stops at once
(and last.pt, written atomically, stays loadable).

Hand-over: if the signal's previous handler was a Python function (submitit installs one on
SIGUSR2 that requeues the Slurm job), it is called once the run has saved and recorded its
status, so the job is requeued and continues from the saved position.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any, Iterator, Optional

# The signals that ask a run to stop; those a platform lacks (Windows) are skipped.
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")


class Interrupted(KeyboardInterrupt):
    """The run stopped on a signal (after saving where it was); the process exits 128 + signum.

    A KeyboardInterrupt, so `except Exception` (Hydra's job runner, dlrun's CLI for failed
    sweep jobs) lets it through: a signal stops a whole sweep, not just its current job.
    """

    def __init__(self, signum: int, message: str, epoch: Optional[int] = None, step: Optional[int] = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.epoch, self.step = epoch, step  # where the run continues: `step` steps into `epoch`

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)


class StopSignals:
    """A context manager: inside it the stop signals set `requested` instead of killing the process.

    Leaving it restores the previous handlers (tests call `run()` in-process, one after another),
    except that with `ignore_after_exit` a signal that would have killed the process is ignored
    from then on: one of several processes whose run ended exits with its own code, even when
    torchrun terminates it because another one exited a moment earlier.
    Outside the main thread Python cannot install handlers; then nothing changes and `requested`
    stays False.
    """

    def __init__(self) -> None:
        self.signum: Optional[int] = None  # the first stop signal received
        self.repeats = 0  # signals received after the first one
        self._previous: dict[int, Any] = {}
        # Set when this process is on its way out with its peers (dlrun.distributed): the launcher
        # terminates the others as soon as one exits, and that must not cut their exit short.
        self.ignore_after_exit = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    def adopt(self, signum: int) -> None:
        """Stop as if `signum` had arrived here: the processes of a run stop together on a signal
        any of them received (dlrun.distributed)."""
        if self.signum is None:
            self.signum = signum

    def interrupted(self, message: str, epoch: Optional[int] = None, step: Optional[int] = None) -> Interrupted:
        """The exception that ends the run after the stop has been handled."""
        assert self.signum is not None, "no stop signal was received"
        return Interrupted(self.signum, message, epoch, step)

    def raise_if_requested(self, where: str) -> None:
        """Stop here (`where`: e.g. "during start-up") when a stop signal has arrived."""
        if self.signum is not None:
            raise self.interrupted(f"stopped by {self.name} {where}")

    def interrupted_instead(self, error: BaseException, where: str) -> BaseException:
        """`error`, or the interruption when a stop signal arrived first: what a signal cut short fails
        in odd ways (an import half done), and the signal is what the user should hear of."""
        if self.signum is None or isinstance(error, Interrupted):
            return error
        return self.interrupted(f"stopped by {self.name} {where} ({type(error).__name__} on the way out)")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self
        pending = early.take()  # received while the command was starting (`held`)
        if pending is not None:
            self.adopt(pending)
        for name in STOP_SIGNALS:
            number = getattr(signal, name, None)
            if number is not None:
                previous = signal.signal(number, self._record)
                # Inside `held`, the handler before it (submitit's requeue) is what a stop hands over to.
                self._previous[number] = early.originals.get(number, previous) if previous == early.record else previous
        return self

    def __exit__(self, kind: Optional[type], error: Optional[BaseException], trace: Optional[TracebackType]) -> None:
        previous_handlers, self._previous = self._previous, {}
        for number, previous in previous_handlers.items():
            ignore = self.ignore_after_exit and previous is signal.SIG_DFL
            signal.signal(number, signal.SIG_IGN if ignore else previous)
        if isinstance(error, Interrupted):
            _hand_over(error.signum, previous_handlers.get(error.signum))

    def _record(self, signum: int, frame: Optional[FrameType]) -> None:
        # Only record: the loop acts at the next step boundary, where the state is consistent.
        if self.signum is None:
            self.signum = signum
        else:
            self.repeats += 1


class _HeldSignals:
    """Stop signals that arrived while `held` was recording them; the first one is kept for the run."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.originals: dict[int, Any] = {}  # the handlers `held` replaced, by signal number

    def record(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.signum is None:
            self.signum = signum

    def take(self) -> Optional[int]:
        """The signal received so far, now the caller's to act on (a run adopts it)."""
        signum, self.signum = self.signum, None
        return signum


early = _HeldSignals()


@contextmanager
def held() -> Iterator[None]:
    """Inside, stop signals are recorded instead of raising KeyboardInterrupt or killing the process.

    The CLI holds them while it imports torch and the dataset libraries and while a job starts: a
    Ctrl-C there would raise inside some library's import, which may swallow it and leave a module
    half made (a bogus "cannot import" later), or print a long traceback. A run that starts inside
    adopts the signal (`StopSignals`) and stops before anything is written; one still pending on
    the way out raises `Interrupted`. Outside, the handlers are what they were, so a launcher
    waiting for its jobs stops on Ctrl-C as usual.
    """
    if threading.current_thread() is not threading.main_thread() or early.originals:
        yield  # not the main thread, or already held further out
        return
    for name in STOP_SIGNALS:
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            early.originals[number] = signal.signal(number, early.record)
    try:
        yield
    except BaseException:
        early.take()  # what ended the block (a run's Interrupted, an error) says what happened
        raise
    finally:
        for number, original in early.originals.items():
            if signal.getsignal(number) == early.record:  # not replaced meanwhile (a run that ends ignoring it)
                signal.signal(number, original)
        early.originals.clear()
    signum = early.take()
    if signum is not None:
        raise Interrupted(signum, f"stopped by {signal_name(signum)} while starting; nothing was written")


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _hand_over(signum: int, previous: Any) -> None:
    """Call a Python handler that was there before us (e.g. submitit's requeue); it may exit."""
    if callable(previous) and previous is not signal.default_int_handler and previous != early.record:
        previous(signum, None)
