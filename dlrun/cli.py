"""The `dlrun` command: a Hydra app whose errors come out as one line and an exit code.

Hydra normally prints its own multi-line report and exits 1. dlrun asks Hydra to raise
instead (HYDRA_FULL_ERROR) and reports the error itself, unless the user set
HYDRA_FULL_ERROR=1 to see the full traceback.

In a multirun the jobs may run in other processes (joblib, submitit), so their outcome is
read back from their run directories by the sweep's leaderboard (dlrun.sweep), and the exit
code is non-zero when any job did not complete. A stop signal (dlrun.preemption) ends the
run, or the whole sweep, after saving; the exit code is then 128 + the signal number.

Under torchrun every process runs this app; the processes other than rank 0 get a throwaway
Hydra directory (dlrun.processes.follower_overrides) and report only errors that are their
own: bad input (exit code 2) is the same for all of them, and rank 0 reports it.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from dlrun import processes, sweep
from dlrun.errors import DlrunError, OutOfStep, ReportedByMain, find_cause
from dlrun.preemption import Interrupted
from dlrun.schema import describe_omegaconf_error


# Errors of the jobs this process ran. Kept here rather than raised through Hydra, which
# would print its own report and, in a multirun, stop the sweep at the first failure.
failures: list[Exception] = []


@hydra.main(version_base="1.3", config_path="pkg://dlrun.conf", config_name="config")
def hydra_app(cfg: DictConfig) -> float:
    """Run one job; return its best validation value (what `hydra/sweeper=optuna` optimizes), NaN if it failed."""
    from dlrun.train import run  # imported here so `--help` and shell completion stay quick

    try:
        best = run(cfg)["best_value"]
    except Exception as error:  # recorded in the run's status.json by run()
        failures.append(error)
        return float("nan")
    return float("nan") if best is None else float(best)


def main() -> None:
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv += processes.follower_overrides()
    try:
        hydra_app()
    except OutOfStep as failed:  # some processes of a distributed run failed: this one cannot go on
        failures.append(failed.error)  # type: ignore[arg-type]
    except Interrupted as stopped:  # a stop signal: the run saved where it stood (a sweep stops too)
        if processes.environment_rank() == 0:  # every process stopped alike; rank 0 says it
            print(f"dlrun: interrupted: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    except KeyboardInterrupt:
        print("dlrun: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:  # composition errors: bad override, unknown option
        failures.append(error)
    if failures and wants_traceback:
        raise failures[0]
    if sweep.finished:  # a multirun: the job directories say which jobs failed, whatever ran them
        for job in sweep.finished[-1].failed:
            print(f"dlrun: error: job {job.name}: {job.status}: {job.error}", file=sys.stderr)
        if sweep.finished[-1].exit_code:
            sys.exit(sweep.finished[-1].exit_code)
        return
    if not failures:
        return
    follower = processes.environment_rank() != 0
    for error in failures:
        # Bad input (exit code 2: config, checkpoint, data) is the same for every process: rank 0 says it.
        if not (follower and (exit_code(error) == 2 or find_cause(error, ReportedByMain))):
            print(f"dlrun: error: {describe_error(error)}", file=sys.stderr)
    sys.exit(exit_code(failures[0]))


def exit_code(error: Exception) -> int:
    """2 for bad input (config, checkpoint, data files), 3 for divergence, 1 for anything else."""
    dlrun_error = find_cause(error, DlrunError)  # also when raised inside a resolver or a Hydra plugin
    if dlrun_error is not None:
        return dlrun_error.exit_code
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        return 2
    return 1


def describe_error(error: BaseException) -> str:
    """One line: what was wrong and, where known, the valid choices."""
    dlrun_error = find_cause(error, DlrunError)
    if dlrun_error is not None:
        return str(dlrun_error)
    missing = find_cause(error, MissingConfigException)
    if missing is not None and missing.options is not None and missing.missing_cfg_file:
        group, _, option = str(missing.missing_cfg_file).rpartition("/")
        return f"unknown {group} '{option}'; valid choices: {', '.join(sorted(missing.options))}"
    omegaconf_error = find_cause(error, OmegaConfBaseException)
    if omegaconf_error is not None:
        return describe_omegaconf_error(omegaconf_error)
    if isinstance(error, HydraException):
        return " ".join(str(error).split())
    first_line = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {first_line} (set HYDRA_FULL_ERROR=1 for the traceback)"

