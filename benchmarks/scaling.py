"""Throughput of one dlrun run on 1 and on N processes (DistributedDataParallel), in one run.

Runs the real commands, one after the other, on the same config:

    python -m dlrun <overrides>                                        # 1 process
    torchrun --standalone --nproc_per_node=N -m dlrun <overrides>      # N processes

and reads `examples_per_sec` (the global batch's examples per second of training, written by
rank 0) from each run's metrics.jsonl, leaving out the first epoch (warm-up). It prints both
and the ratio N-process / 1-process (N would be perfect scaling).

    python benchmarks/scaling.py                                  # CPU, gloo: 1 vs 2 processes
    python benchmarks/scaling.py --device cuda --processes 4      # one process per GPU (NCCL)
    python benchmarks/scaling.py -- model=resnet dataset=cifar10 trainer.batch_size=256

On the CPU the processes share the machine's cores: the 1-process run gets `--threads` CPU
threads and each of the N processes threads/N, so both use the same cores and the ratio shows
what splitting the work costs or gains; a third run, 1 process of threads/N threads, separates
that from PyTorch's own threading (N processes against one of the same width). On GPUs every process has its own GPU and the ratio
is the multi-GPU scaling. Timings are noisy on a shared machine: repeat (`--repeats`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OVERRIDES = ["model=lenet", "dataset=digits", "trainer.batch_size=128", "trainer.epochs=4",
                     "optimizer.lr=0.1"]


def throughput(processes: int, overrides: list[str], device: str, threads: int, root: Path) -> float:
    """Median examples/s of training over the epochs after the first, of one run on `processes`
    processes with `threads` CPU threads each (CPU only)."""
    output_root = root / f"p{processes}-{len(list(root.iterdir()))}"
    settings = [*overrides, f"device={device}", f"output_root={output_root}"]
    if device == "cpu":
        settings.append(f"device.num_threads={threads}")
    launcher = ([sys.executable, "-m", "dlrun"] if processes == 1 else
                [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                 "-m", "dlrun"])
    result = subprocess.run([*launcher, *settings], capture_output=True, text=True, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"scaling: the {processes}-process run failed ({result.returncode}):\n{result.stderr[-3000:]}")
    (metrics,) = output_root.rglob("metrics.jsonl")
    epochs = [json.loads(line) for line in metrics.read_text().splitlines()]
    speeds = [line["examples_per_sec"] for line in epochs if "examples_per_sec" in line]
    if len(speeds) < 2:
        sys.exit("scaling: needs trainer.epochs >= 2 (the first epoch is warm-up)")
    return statistics.median(speeds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="N, the processes of the distributed run")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads in all (CPU only): the 1-process run gets all, each of N gets threads/N")
    parser.add_argument("--repeats", type=int, default=1, help="alternate 1- and N-process runs this many times")
    parser.add_argument("overrides", nargs="*", help=f"dlrun overrides (default: {' '.join(DEFAULT_OVERRIDES)})")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT_OVERRIDES
    if args.processes < 2:
        parser.error(f"--processes={args.processes}: must be at least 2")

    with tempfile.TemporaryDirectory(prefix="dlrun-scaling-") as scratch:
        root = Path(scratch)
        one, many, one_narrow = [], [], []
        share = max(1, args.threads // args.processes)  # CPU threads of each of the N processes
        for _ in range(args.repeats):  # alternating, so that a change in the machine's load hits all
            one.append(throughput(1, overrides, args.device, args.threads, root))
            many.append(throughput(args.processes, overrides, args.device, share, root))
            if args.device == "cpu" and share != args.threads:  # 1 process as narrow as each of the N
                one_narrow.append(throughput(1, overrides, args.device, share, root))

    print(f"dlrun {' '.join(overrides)} device={args.device}"
          + (f", {args.threads} CPU threads in all" if args.device == "cpu" else ""))
    print(f"{'processes':>9}  {'examples/s (median over runs)':>30}  runs")
    print(f"{1:>9}  {statistics.median(one):>30,.0f}  {', '.join(f'{v:,.0f}' for v in one)}")
    print(f"{args.processes:>9}  {statistics.median(many):>30,.0f}  {', '.join(f'{v:,.0f}' for v in many)}")
    ratios = [m / o for o, m in zip(one, many)]
    print(f"ratio {args.processes} / 1 processes: {statistics.median(ratios):.2f}x "
          f"(each repeat: {', '.join(f'{r:.2f}' for r in ratios)}; {args.processes}x is perfect scaling)")
    if one_narrow:  # how well N processes scale one process of the same width, apart from threading
        narrow = [m / o for o, m in zip(one_narrow, many)]
        print(f"1 process of {share} thread(s): {statistics.median(one_narrow):,.0f} examples/s; "
              f"ratio {args.processes} processes / it: {statistics.median(narrow):.2f}x "
              f"(each repeat: {', '.join(f'{r:.2f}' for r in narrow)})")


if __name__ == "__main__":
    main()
