"""What a multirun costs beyond the training it runs, and what joblib's parallel jobs gain.

1. Per-job overhead of the basic launcher: N jobs of a near-zero-work config
   (debug=smoke: 1 epoch of 3 batches) in one `dlrun -m`, against the same config run by
   `run()` in this process. The marginal cost of a job in the sweep, (T_N - T_1) / (N - 1),
   minus the in-process run() time, is what Hydra and dlrun add per job (composition,
   run directory, logging, event files, leaderboard).
2. joblib with 2 jobs against the basic launcher on the same 2-job sweep with a few seconds
   of training per job: the speedup of running them side by side (each gets half the cores).

Run: .venv/bin/python benchmarks/sweep_overhead.py [--jobs 6] [--epochs 3] [--repeats 2]
Each timing is the fastest of --repeats runs; on a machine shared with other work the
numbers still move by tens of percent, so compare them within one run of this script.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DLRUN = Path(sys.executable).with_name("dlrun")
TINY = ["debug=smoke"]


def timed_cli(args: list[str], cwd: Path, repeats: int) -> float:
    """Fastest of `repeats` wall-clock times of `dlrun <args>` (the least disturbed by other load)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run([str(DLRUN), *args], cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            sys.exit(f"dlrun {' '.join(args)} failed:\n{result.stderr}")
    return min(times)


def in_process_run_seconds(work: Path, repeats: int = 5) -> float:
    """Fastest run() on the tiny config, after one warm-up run (imports, first-call costs)."""
    from hydra import compose, initialize_config_module

    from dlrun.train import run

    times = []
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        for index in range(repeats + 1):
            cfg = compose(config_name="config", overrides=[*TINY, f"output_root={work}"])
            started = time.perf_counter()
            run(cfg, run_dir=work / f"inprocess{index}")
            if index:
                times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6, help="jobs in the overhead sweep")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per job in the joblib comparison")
    parser.add_argument("--repeats", type=int, default=2, help="each command's best of this many runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        seeds = ",".join(str(s) for s in range(args.jobs))
        one = timed_cli(["-m", "seed=0", *TINY], work, args.repeats)
        many = timed_cli(["-m", f"seed={seeds}", *TINY], work, args.repeats)
        in_process = in_process_run_seconds(work)
        per_job = (many - one) / (args.jobs - 1)
        print(f"basic launcher: 1 job {one:.2f} s, {args.jobs} jobs {many:.2f} s "
              f"-> {per_job:.2f} s per extra job")
        print(f"run() in process on the same config: {in_process:.2f} s")
        print(f"per-job overhead of a multirun: {per_job - in_process:.2f} s "
              f"({per_job / in_process:.1f}x the in-process run)")

        work_cfg = [f"trainer.epochs={args.epochs}", "dataset.subset=null", "optimizer=sgd,adam"]
        sequential = timed_cli(["-m", *work_cfg], work, args.repeats)
        parallel = timed_cli(["-m", *work_cfg, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], work, args.repeats)
        print(f"2-job sweep ({args.epochs} epochs of LeNet on digits each): basic {sequential:.2f} s, "
              f"joblib n_jobs=2 {parallel:.2f} s -> speedup {sequential / parallel:.2f}x")


if __name__ == "__main__":
    main()
