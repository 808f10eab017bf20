"""What `hydra/launcher=fused` gains: the same sweep through the basic launcher, joblib and fused.

1. Sweeps (`--workloads`): each sweep is one `dlrun -m` command, run through each launcher in turn
   (alternating, best of --repeats), timed from the command's start to its exit: start-up, every
   job's composition, training, files and the leaderboard. The start-up of a `dlrun -m` (Python,
   torch, Hydra; the time of a one-job sweep of one training step) is given too, and the ratios are
   shown with and without it, and the seconds of the fused run's stacked epochs (training,
   validation, each epoch's checkpoints and metrics): the rest is per-job work (composition,
   validation, setup, each job's final files) and the leaderboard.
   - mlp16: 16 MLPs (digits, 64-256-10), optimizer=sgd, optimizer.lr x regularization.weight_decay (4 x 4);
   - lenet8: 8 LeNets (digits at 28x28, the default experiment), regularization.dropout x seed (4 x 2).
2. Steps (`--steps`): one training step of N copies of a model, against a plain PyTorch loop that
   trains the N models one after another, in this process: torch.func (stack_module_state +
   functional_call + vmap) and dlrun's batched layers (dlrun.engine.fused.stacking). This is why
   fused sweeps stack with batched layers.

Run: .venv/bin/python benchmarks/fused_sweep.py [--workloads mlp16,lenet8] [--epochs 20] [--repeats 1]
     [--device cpu|cuda] [--threads N] [--steps]
On a machine shared with other work the numbers move by tens of percent: compare within one run.
"""

from __future__ import annotations

import argparse
import copy
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

DLRUN = Path(sys.executable).with_name("dlrun")
WORKLOADS = {
    "mlp16": ["model=mlp", "optimizer=sgd", "optimizer.lr=0.05,0.1,0.2,0.4", "regularization.weight_decay=0,1e-4,1e-3,1e-2"],
    "lenet8": ["regularization.dropout=0,0.2,0.5,0.7", "seed=0,1"],
}
LAUNCHERS = {"basic": [], "joblib": ["hydra/launcher=joblib"], "fused": ["hydra/launcher=fused"]}


def timed(args: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run([str(DLRUN), *args], cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"dlrun {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return seconds


def fused_epochs_seconds(work: Path) -> float:
    """From the latest sweep's first job log: seconds from the fused group's start to its last epoch line
    (the stacked training and validation, with each epoch's checkpoints and metrics)."""
    sweep = max((work / "outputs" / "multirun").glob("*/*"), key=lambda path: path.stat().st_mtime)
    log = next(sweep.glob("0_*/dlrun.log")).read_text().splitlines()
    stamps = [datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f") for line in log
              if "] fused: " in line or re.search(r"\] epoch \d+/\d+ \(", line)]
    return (stamps[-1] - stamps[0]).total_seconds()


def sweeps(names: list[str], common: list[str], repeats: int, work: Path) -> None:
    startup = min(timed(["-m", "seed=0", "debug=smoke", "trainer.limit_batches=1", *common], work)
                  for _ in range(repeats))
    print(f"start-up of a dlrun -m (a one-step, one-job sweep): {startup:.1f} s\n")
    print("| sweep | jobs | basic s | joblib s | fused s | fused vs basic | fused vs joblib "
          "| same, without start-up: vs basic | vs joblib | fused epochs s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        times: dict[str, list[float]] = {launcher: [] for launcher in LAUNCHERS}
        epochs_s = []
        for _ in range(repeats):
            for launcher, extra in LAUNCHERS.items():  # alternating: load on the machine hits all alike
                times[launcher].append(timed(["-m", *WORKLOADS[name], *extra, *common], work))
            epochs_s.append(fused_epochs_seconds(work))
        best = {launcher: min(values) for launcher, values in times.items()}
        jobs = 1
        for override in WORKLOADS[name]:
            jobs *= override.count(",") + 1
        basic, joblib, fused = best["basic"], best["joblib"], best["fused"]
        print(f"| {name} | {jobs} | {basic:.1f} | {joblib:.1f} | {fused:.1f} | {basic / fused:.2f}x "
              f"| {joblib / fused:.2f}x | {(basic - startup) / (fused - startup):.2f}x "
              f"| {(joblib - startup) / (fused - startup):.2f}x | {min(epochs_s):.1f} |")


def steps(device_name: str, threads: int | None, repeats: int) -> None:
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    from dlrun.engine.device import _inputs_to_channels_last
    from dlrun.engine.fused.layers import SHARED, Act
    from dlrun.engine.fused.stacking import StackedModel
    from dlrun.models.lenet import LeNet
    from dlrun.models.mlp import MLP

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    cases = [("16 MLPs 64-256-10", lambda: MLP([1, 8, 8], 10, [256]), (1, 8, 8), 16, False),
             ("8 LeNets at 28x28", lambda: LeNet([1, 28, 28], 10), (1, 28, 28), 8, device.type == "cpu")]
    print(f"\nOne training step (batch 64, SGD) of N models on {device}, {torch.get_num_threads()} CPU threads:\n")
    print("| models | plain loop ms | torch.func vmap ms | batched layers ms | vmap vs loop | batched vs loop |")
    print("|---|---|---|---|---|---|")
    for label, make, shape, members, channels_last in cases:
        torch.manual_seed(0)
        models = [make().to(device) for _ in range(members)]
        if channels_last:  # as dlrun trains conv nets on the CPU
            for model in models:
                model.to(memory_format=torch.channels_last)
                model.register_forward_pre_hook(_inputs_to_channels_last)
        inputs = torch.randn(64, *shape, device=device)
        targets = torch.randint(0, 10, (64,), device=device)
        optimizers = [torch.optim.SGD(model.parameters(), lr=0.01) for model in models]

        def plain() -> None:
            for model, optimizer in zip(models, optimizers):
                loss = F.cross_entropy(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

        params, buffers = stack_module_state(copy.deepcopy(models))
        params = {name: value.detach().requires_grad_() for name, value in params.items()}
        base = copy.deepcopy(models[0]).to("meta")
        forward = vmap(lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None),
                       randomness="different")
        vmap_optimizer = torch.optim.SGD(list(params.values()), lr=0.01)

        def with_vmap() -> None:
            outputs = forward(params, buffers, inputs)
            loss = F.cross_entropy(outputs.reshape(-1, 10), targets.repeat(members), reduction="sum") / 64
            vmap_optimizer.zero_grad()
            loss.backward()
            vmap_optimizer.step()

        stacked = StackedModel.build(copy.deepcopy(models), channels_last)
        stacked_optimizer = torch.optim.SGD(stacked.parameters(), lr=0.01)

        def batched() -> None:
            outputs = stacked(Act(inputs, SHARED, members))
            loss = F.cross_entropy(outputs.reshape(-1, 10), targets.repeat(members), reduction="sum") / 64
            stacked_optimizer.zero_grad()
            loss.backward()
            stacked_optimizer.step()

        results = {}
        for _ in range(repeats):
            for name, step in (("plain", plain), ("vmap", with_vmap), ("batched", batched)):
                step()  # warm-up
                sync()
                started = time.perf_counter()
                for _ in range(20):
                    step()
                sync()
                results.setdefault(name, []).append((time.perf_counter() - started) / 20 * 1000)
        best = {name: min(values) for name, values in results.items()}
        print(f"| {label} | {best['plain']:.2f} | {best['vmap']:.2f} | {best['batched']:.2f} "
              f"| {best['plain'] / best['vmap']:.2f}x | {best['plain'] / best['batched']:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp16,lenet8", help="comma-separated: mlp16, lenet8 (none: '')")
    parser.add_argument("--epochs", type=int, default=20, help="trainer.epochs of every job (20: the default)")
    parser.add_argument("--repeats", type=int, default=1, help="each command's best of this many runs")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="device.num_threads (default: PyTorch's)")
    parser.add_argument("--steps", action="store_true", help="also time one fused training step (table 2)")
    args = parser.parse_args()
    common = [f"trainer.epochs={args.epochs}", f"device={args.device}"]
    if args.threads:
        common.append(f"device.num_threads={args.threads}")
    names = [name for name in args.workloads.split(",") if name]
    with tempfile.TemporaryDirectory() as tmp:
        if names:
            sweeps(names, common, args.repeats, Path(tmp))
    if args.steps:
        steps(args.device, args.threads, max(args.repeats, 3))


if __name__ == "__main__":
    main()
