"""How long dlrun takes to start, as ratios to `python -c "import torch"` measured in the same run.

    python benchmarks/startup.py                 # 5 repeats of each command, medians
    python benchmarks/startup.py --repeats 9 --wait-idle

Commands, each a fresh process, in turns (one repeat of every command, then the next repeat), so that a
change in the machine's load touches them alike: `python -c "import torch"`, a typo (`dlrun model=foo`,
which must fail before torch is imported), `dlrun --help`, and a whole `dlrun debug=smoke` run (the
default experiment, 1 epoch of 3 batches, into a temporary folder). Targets: typo and --help
<= 0.6x, the smoke run <= 2.5x of importing torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DLRUN = Path(sys.executable).with_name("dlrun")
TARGETS = {"typo": 0.6, "help": 0.6, "smoke": 2.5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--wait-idle", action="store_true", help="wait (<= 15 min) for a 1-minute load below 0.8")
    args = parser.parse_args()
    if args.wait_idle:
        deadline = time.monotonic() + 900
        while os.getloadavg()[0] >= 0.8 and time.monotonic() < deadline:
            print(f"waiting for the machine to be idle: 1-minute load {os.getloadavg()[0]:.2f}", flush=True)
            time.sleep(30)
    with tempfile.TemporaryDirectory() as folder:
        commands = {
            "import torch": ([sys.executable, "-c", "import torch"], 0),
            "typo": ([str(DLRUN), "model=foo"], 2),
            "help": ([str(DLRUN), "--help"], 0),
            "smoke": ([str(DLRUN), "debug=smoke", f"output_root={folder}/outputs"], 0),
        }
        load_before = os.getloadavg()[0]
        _run(*commands["smoke"], cwd=folder)  # once unmeasured: caches (fonts, step times) as a user has them
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, (command, expected) in commands.items():
                times[name].append(_run(command, expected, cwd=folder))
    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians["import torch"]
    print(f"{os.cpu_count()}-core CPU; median of {args.repeats}; 1-minute load average {load_before:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after\n")
    print("| command | median s | ratio to import torch | target |")
    print("|---|---|---|---|")
    print(f"| `python -c \"import torch\"` | {torch_s:.2f} | 1.00× | |")
    labels = {"typo": "`dlrun model=foo` (a typo)", "help": "`dlrun --help`", "smoke": "`dlrun debug=smoke`"}
    for name, label in labels.items():
        ratio = medians[name] / torch_s
        verdict = "met" if ratio <= TARGETS[name] else "NOT met"
        print(f"| {label} | {medians[name]:.2f} | {ratio:.2f}× | ≤ {TARGETS[name]}× ({verdict}) |")


def _run(command: list[str], expected: int, cwd: str) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - started
    if done.returncode != expected:
        sys.exit(f"{' '.join(command)} exited {done.returncode}, not {expected}: {done.stderr.strip()[-500:]}")
    return elapsed


if __name__ == "__main__":
    main()
