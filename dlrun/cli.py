"""The `dlrun` command: a Hydra app whose errors come out as one line and an exit code.

Hydra normally prints its own multi-line report and exits 1. dlrun asks Hydra to raise
instead (HYDRA_FULL_ERROR) and reports the error itself, unless the user set
HYDRA_FULL_ERROR=1 to see the full traceback.

In a multirun the jobs may run in other processes (joblib, submitit), so their outcome is
read back from their run directories by the sweep's leaderboard (dlrun.run.leaderboard), and the
exit code is non-zero when any job did not complete. A stop signal (dlrun.run.stop_signals) ends
the run, or the whole sweep, after saving; the exit code is then 128 + the signal number.

Under torchrun every process runs this app; the processes other than rank 0 get a throwaway
Hydra directory (dlrun.run.processes.follower_overrides) and report only errors that are their
own: bad input (exit code 2) is the same for all of them, and rank 0 reports it.

Stop signals are held (dlrun.run.stop_signals.held) while the command imports its libraries and
while a job starts, so a Ctrl-C there ends the command as interrupted, in one line, before
anything is written; the libraries are imported inside `main` for that reason.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Callable

from dlrun.garbage_collector import freeze_at_exit, import_quickly
from dlrun.run.stop_signals import Interrupted, held

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from dlrun.run.leaderboard import SweepSummary


def main() -> None:
    freeze_at_exit()  # Python's shutdown then need not search torch's objects for cycles
    try:
        with held():  # a Ctrl-C while the libraries load: "interrupted", not a traceback
            import hydra

            from dlrun.config.resolvers import forget_claimed
            from dlrun.errors import OutOfStep
            from dlrun.run import leaderboard, processes
    except Interrupted as stopped:
        print(f"dlrun: interrupted: {stopped}", file=sys.stderr)
        sys.exit(stopped.exit_code)
    forget_claimed()  # a second command in this process (a notebook) claims a directory of its own
    wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv += processes.follower_overrides()
    _register_fused_launcher()
    # Errors of the jobs this process ran. Kept here rather than raised through Hydra, which
    # would print its own report and, in a multirun, stop the sweep at the first failure.
    failures: list[BaseException] = []

    def job(cfg: DictConfig) -> float:
        """Run one job; return its best validation value (what `hydra/sweeper=optuna` optimizes), NaN if it failed."""
        try:
            with held():  # until the run handles stop signals itself: they stop it before it writes anything
                validated = _check_before_imports(cfg)  # a bad config is reported before torch is imported
                best = _import_training()(cfg, validated=validated)["best_value"]
        except Exception as error:  # recorded in the run's status.json by run()
            failures.append(error)
            return float("nan")
        return float("nan") if best is None else float(best)

    app = hydra.main(version_base="1.3", config_path="pkg://dlrun.conf", config_name="config")(job)
    try:
        app()
    except OutOfStep as failed:  # some processes of a distributed run failed: this one cannot go on
        failures.append(failed.error)
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
    if leaderboard.finished:  # a multirun: the job directories say which jobs failed, whatever ran them
        _exit_for_sweep(leaderboard.finished[-1])
        return
    if failures:
        _exit_for_failures(failures)


def _import_training() -> Callable[..., dict[str, Any]]:
    """`dlrun.train.run`, imported here so that `--help` and shell completion stay quick, with the garbage
    collector held back while torch loads (dlrun.garbage_collector: about a second of every run)."""
    import_quickly("torch._dynamo", "dlrun.train")  # torch.optim imports Dynamo when it makes the first optimizer
    from dlrun.train import run

    return run


def _register_fused_launcher() -> None:
    """Make `hydra/launcher=fused` (dlrun's launcher plugin) known to Hydra in an editable install too.

    Hydra finds plugins by scanning the `hydra_plugins` namespace package with pkgutil; the import
    hook of a setuptools editable install (`pip install -e .`, what `make` does) does not list its
    namespace packages to pkgutil, so the scan misses the launcher there. Importing the module
    registers its config (ConfigStore), and `Plugins.register` its class (Hydra's scan runs anyway).
    """
    from hydra.core.plugins import Plugins
    from hydra_plugins.dlrun_fused_launcher.fused_launcher import FusedLauncher

    Plugins.instance().register(FusedLauncher)


def _exit_for_sweep(summary: SweepSummary) -> None:
    for job in summary.failed:
        print(f"dlrun: error: job {job.name}: {job.status}: {job.error}", file=sys.stderr)
    if summary.exit_code:
        sys.exit(summary.exit_code)


def _exit_for_failures(failures: list[BaseException]) -> None:
    from dlrun.config.hints import describe_command_error
    from dlrun.config.messages import exit_code
    from dlrun.errors import ReportedByMain, find_cause
    from dlrun.run import processes

    follower = processes.environment_rank() != 0
    overrides = [argument for argument in sys.argv[1:] if not argument.startswith("-")]  # names the chosen options
    for error in failures:
        # Bad input (exit code 2: config, checkpoint, data) is the same for every process: rank 0 says it.
        if not (follower and (exit_code(error) == 2 or find_cause(error, ReportedByMain))):
            print(f"dlrun: error: {describe_command_error(error, overrides)}", file=sys.stderr)
    sys.exit(exit_code(failures[0]))


def _check_before_imports(cfg: DictConfig) -> DictConfig:
    """The config's checks, before `dlrun.train` imports torch (seconds): a typo is reported at once."""
    from pathlib import Path

    from hydra.core.hydra_config import HydraConfig

    from dlrun.run.admission import check_before_imports

    return check_before_imports(cfg, Path(HydraConfig.get().runtime.output_dir))
