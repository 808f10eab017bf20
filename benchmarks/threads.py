"""CPU threads under load: training examples/s with 1, 2, ... threads and with `device.num_threads=auto`,
on an idle machine and beside 1 and 2 busy CPU-bound processes that this script starts and stops.

    python benchmarks/threads.py                    # GRU, LeNet, MLP; loads 0, 1, 2; 3 s per measurement
    python benchmarks/threads.py --wait-idle        # first wait until the 1-minute load average is below 0.8
    python benchmarks/threads.py --passive          # also each setting with OMP_WAIT_POLICY=PASSIVE

Each (load, setting) pair trains in a fresh process, as a `dlrun` run would: `auto` is decided at
its start by dlrun.machine.choose_threads, which sees the busy processes. The workloads are d2l's,
at batch 256: a GRU language model (hidden 256, 35 steps) on the characters of README.md, LeNet and
an MLP (256 hidden) on synthetic 28x28 images; a plain loop of forward, loss, backward, SGD step.
A warm-up, then the best of 2 timed windows counts (and the better of 2 processes per setting, run
in mirrored order). The table gives each setting's examples/s and its ratio to the best fixed
thread count under the same load; the target is auto >= 0.8x everywhere. With --passive, every
setting above 1 thread runs a second time with OpenMP's passive wait policy (threads sleep at a
barrier instead of spinning), to see whether that softens oversubscription.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BATCH = 256
BUSY = "while True: pass"  # one CPU-bound process: what a second job or a test suite is to the run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="gru,lenet,mlp")
    parser.add_argument("--loads", default="0,1,2", help="busy background processes to measure beside")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed window")
    parser.add_argument("--wait-idle", action="store_true", help="wait (<= 15 min) for a 1-minute load below 0.8")
    parser.add_argument("--passive", action="store_true", help="also run settings with OMP_WAIT_POLICY=PASSIVE")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one measurement in this process
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_measure(args.worker, args.workloads.split(","), args.seconds)))
        return
    if args.wait_idle:
        _wait_for_idle()
    cores = len(os.sched_getaffinity(0))
    fixed = [str(count) for count in range(1, cores + 1)]
    settings = [*fixed, "auto"]
    if args.passive:
        settings += [f"{setting}/passive" for setting in settings if setting != "1"]
    load_before = os.getloadavg()[0]
    results: dict[int, dict[str, dict]] = {}
    for load in (int(value) for value in args.loads.split(",")):
        results[load] = _under_load(load, settings, args)
    print(f"\n{cores}-core CPU, torch {_torch_version()}, batch {BATCH}; 1-minute load average "
          f"{load_before:.2f} before the measurements, {os.getloadavg()[0]:.2f} after\n")
    _print_table(results, fixed, args.workloads.split(","))


def _under_load(load: int, settings: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Every setting measured beside `load` busy processes, twice in mirrored order (drift evens out)."""
    busy = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(load)]
    try:
        time.sleep(1.0)  # the busy processes are running before any measurement starts
        measured: dict[str, dict] = {}
        for setting in [*settings, *reversed(settings)]:
            result = _run_worker(setting, args)
            best = measured.setdefault(setting, {**result, "chosen": []})
            best["chosen"].append(result["threads"])  # auto may choose differently in its two processes
            for workload, rate in result["rates"].items():
                best["rates"][workload] = max(best["rates"][workload], rate)
            print(f"load {load}, threads {setting}: {result['threads']} thread(s) {result['why']} "
                  + " ".join(f"{w} {r:,.0f}/s" for w, r in result["rates"].items()), flush=True)
        return measured
    finally:
        for process in busy:
            process.kill()
        for process in busy:
            process.wait()


def _run_worker(setting: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", setting, "--workloads", args.workloads,
               "--seconds", str(args.seconds)]
    environment = dict(os.environ)
    if setting.endswith("/passive"):  # read by OpenMP when torch loads it: set before the process starts
        environment["OMP_WAIT_POLICY"] = "PASSIVE"
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600, check=True,
                          env=environment)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _measure(setting: str, workloads: list[str], seconds: float) -> dict:
    """In a fresh process: set the threads as `dlrun` would, then each workload's examples/s."""
    import torch

    from dlrun.machine import choose_threads

    count = setting.partition("/")[0]
    choice = choose_threads("auto" if count == "auto" else int(count), parallel=1)
    torch.set_num_threads(choice.threads)
    rates = {}
    for name in workloads:
        model, inputs, targets = _workload(name)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def step() -> None:
            output = model(inputs)
            loss = torch.nn.functional.cross_entropy(output.reshape(-1, output.shape[-1]), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        _timed_steps(step, 0.5)  # warm-up: allocator, oneDNN primitives
        rates[name] = max(BATCH * _timed_steps(step, seconds) for _ in range(2))
    return {"threads": torch.get_num_threads(), "why": choice.why, "rates": rates}


def _timed_steps(step, seconds: float) -> float:
    """Steps per second over at least `seconds`."""
    started, steps = time.perf_counter(), 0
    while steps == 0 or time.perf_counter() - started < seconds:
        step()
        steps += 1
    return steps / (time.perf_counter() - started)


def _workload(name: str):
    import torch

    from dlrun.models.lenet import LeNet
    from dlrun.models.mlp import MLP
    from dlrun.models.recurrent import GRU

    generator = torch.Generator().manual_seed(0)
    if name == "gru":
        text = (REPO / "README.md").read_text()
        vocabulary = sorted(set(text))
        ids = torch.tensor([vocabulary.index(char) for char in text[: BATCH * 36]])
        windows = ids[: BATCH * 36].reshape(BATCH, 36)
        model = GRU(input_shape=[35], num_outputs=len(vocabulary), task="language_model", hidden_size=256)
        return model, windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    images = torch.rand(BATCH, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (BATCH,), generator=generator)
    model = LeNet(input_shape=[1, 28, 28], num_outputs=10) if name == "lenet" else MLP(
        input_shape=[1, 28, 28], num_outputs=10, hidden=[256])
    return model, images, labels


def _print_table(results: dict[int, dict[str, dict]], fixed: list[str], workloads: list[str]) -> None:
    """One row per load and workload: every setting's examples/s and its ratio to the best fixed count."""
    settings = list(next(iter(results.values())))
    names = {setting: setting.partition("/")[0] + ("" if setting.startswith("auto") else " thr.")
             + (" passive" if setting.endswith("/passive") else "") for setting in settings}
    print("| busy processes | workload | " + " | ".join(f"{names[s]} ex/s" for s in settings) + " | auto threads |")
    print("|" + "---|" * (len(settings) + 3))
    worst = float("inf")
    for load, measured in results.items():
        for workload in workloads:
            rates = {setting: measured[setting]["rates"][workload] for setting in settings}
            best_fixed = max(rates[count] for count in fixed)
            worst = min(worst, rates["auto"] / best_fixed)
            cells = " | ".join(f"{rates[s]:,.0f} ({rates[s] / best_fixed:.2f}×)" for s in settings)
            chosen = ", ".join(str(threads) for threads in measured["auto"]["chosen"])
            print(f"| {load} | {workload} | {cells} | {chosen} |")
    print(f"\n(ratios: to the best fixed thread count under the same load) "
          f"auto against the best fixed choice, worst case: {worst:.2f}× (target >= 0.8×)")


def _wait_for_idle(limit_s: float = 900.0) -> None:
    deadline = time.monotonic() + limit_s
    while os.getloadavg()[0] >= 0.8 and time.monotonic() < deadline:
        print(f"waiting for the machine to be idle: 1-minute load {os.getloadavg()[0]:.2f}", flush=True)
        time.sleep(30)


def _torch_version() -> str:
    import torch

    return torch.__version__


if __name__ == "__main__":
    main()
