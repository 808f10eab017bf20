"""What the tools' commands share: the arguments that name a run, and errors as one line and an exit code."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Callable

from dlrun.config.messages import describe_error, exit_code
from dlrun.errors import DlrunError
from dlrun.garbage_collector import freeze_at_exit
from dlrun.tools.loaded_run import CHECKPOINTS


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run directory, --checkpoint and --device: the arguments every tool takes."""
    parser.add_argument("run_dir", type=Path, help="a run directory, e.g. outputs/<date>/<time>")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINTS), default="best",
                        help="which weights: best.pt (default) or last.pt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to run the model (default: the run's device.type)")


def tool_main(prog: str, body: Callable[[], Any]) -> None:
    """Run a tool's `body`; a failure is one line `<prog>: error: ...` and an exit code (2: bad input).

    HYDRA_FULL_ERROR=1 shows the traceback instead, as for `dlrun`.
    """
    freeze_at_exit()  # Python's shutdown then need not search torch's objects for cycles
    try:
        body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(error, DlrunError):
            raise
        print(f"{prog}: error: {describe_error(error)}", file=sys.stderr)
        sys.exit(exit_code(error))
