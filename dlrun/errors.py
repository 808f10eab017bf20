"""The errors dlrun reports as one line, each with the exit code the CLI returns."""

from __future__ import annotations

from typing import Optional, TypeVar

E = TypeVar("E", bound=BaseException)


class DlrunError(Exception):
    """A failure the user can act on; the CLI prints its message alone, no traceback."""

    exit_code = 1


class ConfigError(DlrunError):
    """The composed configuration is invalid; raised before any training starts."""

    exit_code = 2


class CheckpointError(DlrunError):
    """A checkpoint to resume from is missing, unreadable or does not fit the config."""

    exit_code = 2


class DataError(DlrunError):
    """Dataset files are missing or malformed, or a download failed."""

    exit_code = 2


class RunDirectoryError(DlrunError):
    """A run directory cannot be used as the command asks: another process writes it, it holds
    another run, or its records are damaged beyond rebuilding. Nothing was written into it."""

    exit_code = 2


class StorageError(DlrunError):
    """Writing a run's files failed (disk full, read-only or failing storage); the message names the path."""

    exit_code = 1


class TrainingDiverged(DlrunError):
    """The loss became NaN or infinite; the run stopped without saving the bad state."""

    exit_code = 3


class ReportedByMain(DlrunError):
    """On several processes (dlrun.distributed): rank 0 failed while preparing the run and reports it; the other processes exit quietly with its code."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.exit_code = getattr(error, "exit_code", 1)


class OutOfStep(BaseException):
    """A failure that not every process of the run met at the same point: they cannot go on together.

    A BaseException, so that Hydra's job runner does not carry on with the next job of a sweep;
    the CLI reports `error` and exits with its code.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error



def find_cause(error: Optional[BaseException], kind: type[E]) -> Optional[E]:
    """`error` or the first exception of type `kind` in its cause chain, None if there is none.

    Resolvers, Hydra and OmegaConf wrap the errors they meet in their own, so the one to
    report may sit a few links down the chain.
    """
    seen: set[int] = set()  # a chain may loop (an error raised again while handling itself)
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None
