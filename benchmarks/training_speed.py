"""Training throughput of dlrun's own training path against a plain PyTorch loop, in one run.

The plain loop is d2l's: `DataLoader(TensorDataset(...))` over host tensors, a copy to the
device per batch and a `.item()` per step, in a Python process of its own as a user's script
runs. dlrun's path is the code `dlrun` runs, in a process set up as `dlrun` sets it up
(`configure_backends`: threads, `device.host_allocator`): the device-resident `TensorLoader` and
`dlrun.engine.loop.train_one_epoch`. Both train the same model (same initial weights), on the same synthetic
data, with the same optimizer and batch size. `--host-allocator system` leaves glibc's defaults in
dlrun's process too, which shows how much of the difference the allocator makes.

    python benchmarks/training_speed.py                       # CPU: lenet, mlp, softmax, resnet at 32 px
    python benchmarks/training_speed.py --device cuda --amp bf16 --channels-last --save
    python benchmarks/training_speed.py --workloads lenet --compile --compile-mode reduce-overhead

With --compile, dlrun's path also runs compiled (device.compile=true through dlrun.compiling):
the table adds its epoch throughput, the compile seconds with a cold and with a warm Inductor
cache (each measured in a fresh process, as a new run would see them), and the run length in
steps from which compiling pays (what device.compile=auto estimates).

Figures to reach (issues 7 and 16): CPU eager LeNet >= 1.0x, MLP and softmax >= 1.5x, compiled
LeNet >= 1.5x, warm-cache compile <= 1/3 of cold; GPU LeNet and MLP >= 3x, LeNet >= 500,000
examples/s on an H100-class GPU, ResNet-18 at 96 px (bf16 + channels_last) >= 25 % of the
measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import dlrun  # noqa: F401  (registers the config resolvers)
from dlrun.config import validate
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.engine.compiling import CompileSwitch, Estimate, steps_to_pay
from dlrun.engine.device import configure_backends, prepare_model, use_memory_format
from dlrun.engine.loop import Trainer, train_one_epoch
from dlrun.engine.precision import AMP_DTYPES, Precision
from dlrun.models import build_model
from dlrun.models.summary import summarize_model
from dlrun.run.save_points import SavePoints, SaveSchedule
from dlrun.run.stop_signals import StopSignals
from dlrun.tasks import Classification


@dataclass
class Workload:
    """A model, its d2l training recipe, and the synthetic data it trains on."""

    name: str
    overrides: list[str]
    size: int  # image side in pixels
    batch_size: int
    lr: float
    examples: int  # per epoch
    target_cpu: float | None = None  # ratio dlrun / plain loop to reach
    target_gpu: float | None = None
    target_compiled_cpu: float | None = None


WORKLOADS = {
    "lenet": Workload("lenet", ["model=lenet"], 28, 256, 0.9, 60_000, 1.0, 3.0, 1.5),
    "mlp": Workload("mlp", ["model=mlp"], 28, 256, 0.1, 60_000, 1.5, 3.0),
    "softmax": Workload("softmax", ["model=softmax"], 28, 256, 0.1, 60_000, 1.5, None),
    "resnet96": Workload("resnet96", ["model=resnet"], 96, 256, 0.05, 60_000),
    "resnet32": Workload("resnet32", ["model=resnet"], 32, 256, 0.05, 60_000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workloads", default=None, help="comma list; default: all on CUDA, all but resnet96 on CPU")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per loop (default: one full epoch; CPU resnet: 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs per loop; the best counts")
    parser.add_argument("--amp", default="off", choices=list(AMP_DTYPES))
    parser.add_argument("--channels-last", action="store_true",
                        help="NHWC in both loops (default: dlrun's device.channels_last=auto, the plain loop NCHW)")
    parser.add_argument("--compile", action="store_true", help="add compiled columns (and compile cold/warm)")
    parser.add_argument("--compile-mode", default="default")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for every loop (device.num_threads; 1 is steadier on a busy machine)")
    parser.add_argument("--host-allocator", default="tuned", choices=["tuned", "system"],
                        help="device.host_allocator in dlrun's process (the plain loop's process keeps the system's)")
    parser.add_argument("--save", action="store_true", help="write the table under benchmarks/results/")
    parser.add_argument("--compile-probe", help=argparse.SUPPRESS)  # internal: one compile in a fresh process
    args = parser.parse_args()
    if args.compile_probe:
        print(json.dumps({"compile_s": compile_probe(WORKLOADS[args.compile_probe], torch.device(args.device), args)}))
        return

    device = torch.device(args.device)
    if args.threads:  # before the title names the thread count (configure_backends sets it again per workload)
        torch.set_num_threads(args.threads)
    default = "lenet,mlp,softmax,resnet96,resnet32" if device.type == "cuda" else "lenet,mlp,softmax,resnet32"
    names = (args.workloads or default).split(",")
    peak = bf16_matmul_peak(device) if device.type == "cuda" else None

    table = Table(title=f"training throughput, {describe(device)}, torch {torch.__version__}")
    columns = ["workload", "batch", "plain ex/s", "eager ex/s", "eager ratio", "target"]
    if args.compile:
        columns += ["compiled ex/s", "compiled ratio", "target", "compile s cold/warm", "pays from (steps)"]
    for column in [*columns, *(["% bf16 peak"] if peak else [])]:
        table.add_column(column, justify="right" if column != "workload" else "left")
    for name in names:
        workload = WORKLOADS[name]
        steps = args.steps or (3 if device.type == "cpu" and name.startswith("resnet") else None)
        row = measure(workload, device, steps, args)
        target = workload.target_gpu if device.type == "cuda" else workload.target_cpu
        fraction = (f"{100 * row['flops_per_s'] / peak:.1f} %" if peak else "")
        cells = [name, str(workload.batch_size), f"{row['plain']:,.0f}", f"{row['dlrun']:,.0f}",
                 f"{row['dlrun'] / row['plain']:.2f}x", target_cell(row["dlrun"] / row["plain"], target)]
        if args.compile:
            cells += compiled_cells(workload, device, row, args)
        table.add_row(*cells, *([fraction] if peak else []))
    console = Console(record=True, width=200)
    console.print(table)
    settings = (f"amp={args.amp} channels_last={'true (both loops)' if args.channels_last else 'auto (plain: NCHW)'} "
                f"compile_mode={args.compile_mode} "
                f"host_allocator={args.host_allocator}; "
                f"machine load (1-min average) before/after: {LOAD_BEFORE:.1f}/{os.getloadavg()[0]:.1f}")
    console.print(settings + (f"; measured bf16 matmul peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    if args.save:
        save(console, device)


def measure(workload: Workload, device: torch.device, steps: int | None, args: argparse.Namespace) -> dict:
    """Examples/s of both loops on identical model weights, data, optimizer and batch size."""
    cfg = composed(workload, args)
    configure_backends(cfg.device)
    torch.manual_seed(0)
    images, labels = synthetic_data(workload)
    model = build_model(cfg.model)
    flops = summarize_model(model, images[:1]).flops
    batches = steps or -(-workload.examples // workload.batch_size)

    dlrun_model = copy.deepcopy(model).to(device)
    net = prepare_model(dlrun_model, cfg.device)  # device.compile=false: the eager path
    optimizer = torch.optim.SGD(dlrun_model.parameters(), lr=workload.lr)
    precision = Precision(args.amp, device)
    loader = TensorLoader(TensorSplit(images, labels).to(device), workload.batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(0), limit_batches=batches)
    task = Classification()
    # The checks dlrun's loop makes after every step (stop signal, save schedule); none is due here.
    saver = SavePoints(Path("unused"), lambda position, rng: {}, SaveSchedule(None, 10), StopSignals(),
                       loader.generator)

    def dlrun_epoch() -> None:
        train_one_epoch(Trainer(net, task, optimizer, precision), loader, on_step=saver.after_step)

    compiled_model = copy.deepcopy(model).to(device)
    use_memory_format(compiled_model, cfg.device)
    compiled_net = CompileSwitch(compiled_model, True, args.compile_mode, "benchmark")
    compiled_net.times.update = lambda *a, **k: None  # the benchmark's epochs are not a user's measurements
    compiled_optimizer = torch.optim.SGD(compiled_model.parameters(), lr=workload.lr)

    def compiled_epoch() -> None:
        train_one_epoch(Trainer(compiled_net, task, compiled_optimizer, precision), loader, on_step=saver.after_step)

    # The plain loop runs in a fresh Python process of its own, as a user's script would: dlrun's
    # process settings (device.host_allocator, dlrun.host_memory) do not reach it.
    plain = PlainLoopProcess(workload, device, batches, model.state_dict(), args)
    loops = {"plain": plain.epoch, "dlrun": lambda: timed(dlrun_epoch, device),
             **({"compiled": lambda: timed(compiled_epoch, device)} if args.compile else {})}
    try:
        for epoch in loops.values():
            epoch()  # warm-up: allocator, cuDNN autotuning, compilation
        # Alternate the loops and keep each one's best time, so load from other processes
        # on a shared machine penalises neither side.
        best = {label: float("inf") for label in loops}
        for _ in range(args.repeats):
            for label, epoch in loops.items():
                best[label] = min(best[label], epoch())
    finally:
        plain.close()
    examples = min(batches * workload.batch_size, workload.examples)
    results = {label: examples / seconds for label, seconds in best.items()}
    results["flops_per_s"] = 3 * flops * results["dlrun"]  # forward + backward ~ 3x forward
    results["batches"] = batches
    return results


def compiled_cells(workload: Workload, device: torch.device, row: dict, args: argparse.Namespace) -> list[str]:
    """Compiled throughput and ratio, compile seconds (cold, then warm: two fresh processes, one
    Inductor cache), and the steps from which compiling pays with the warm cache."""
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = (compile_in_fresh_process(workload, device, args, cache) for _ in range(2))
    examples_per_step = min(row["batches"] * workload.batch_size, workload.examples) / row["batches"]
    estimate = Estimate(examples_per_step / row["dlrun"], examples_per_step / row["compiled"], warm)
    pays = steps_to_pay(estimate)
    target = workload.target_compiled_cpu if device.type == "cpu" else None
    warm_target = f"{'met' if warm <= cold / 3 else 'MISSED'}: warm <= 1/3 of cold" if device.type == "cpu" else ""
    return [f"{row['compiled']:,.0f}", f"{row['compiled'] / row['plain']:.2f}x",
            target_cell(row["compiled"] / row["plain"], target), f"{cold:.1f} / {warm:.1f} ({warm_target})",
            f"{pays:,.0f}" if pays else "never"]


def target_cell(ratio: float, target: float | None) -> str:
    return f">= {target}x {'met' if ratio >= target else 'MISSED'}" if target else ""


def compile_in_fresh_process(workload: Workload, device: torch.device, args: argparse.Namespace,
                             cache: str) -> float:
    command = [sys.executable, __file__, "--compile-probe", workload.name, "--device", device.type,
               "--amp", args.amp, "--compile-mode", args.compile_mode, *(["--channels-last"] * args.channels_last),
               "--host-allocator", args.host_allocator, *(["--threads", str(args.threads)] if args.threads else [])]
    environment = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "DLRUN_COMPILE_CACHE": cache}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=1200, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["compile_s"]


def compile_probe(workload: Workload, device: torch.device, args: argparse.Namespace) -> float:
    """Seconds dlrun's first compiled steps took (compile time) in this process, as in a run."""
    cfg = composed(workload, args)
    configure_backends(cfg.device)
    torch.manual_seed(0)
    images = torch.rand(4 * workload.batch_size, 1, workload.size, workload.size)
    labels = torch.randint(0, 10, (len(images),))
    model = build_model(cfg.model).to(device)
    use_memory_format(model, cfg.device)
    net = CompileSwitch(model, True, args.compile_mode, "benchmark")
    net.times.update = lambda *a, **k: None
    loader = TensorLoader(TensorSplit(images, labels).to(device), workload.batch_size, shuffle=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=workload.lr)
    train_one_epoch(Trainer(net, Classification(), optimizer, Precision(args.amp, device)), loader)
    return net.compile_seconds


class PlainLoopProcess:
    """The plain loop in a fresh Python process (spawned) that runs one epoch per request and
    answers with its seconds; this process waits meanwhile, so the two never share the CPU."""

    def __init__(self, workload: Workload, device: torch.device, batches: int, weights: dict,
                 args: argparse.Namespace) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=plain_loop_process, daemon=True,
                                       args=(child, workload, device.type, batches, weights, args))
        self.process.start()

    def epoch(self) -> float:
        self.connection.send("epoch")
        return self.connection.recv()

    def close(self) -> None:
        self.connection.send("stop")
        self.process.join(timeout=60)


def plain_loop_process(connection, workload: Workload, device_type: str, batches: int, weights: dict,
                       args: argparse.Namespace) -> None:
    device = torch.device(device_type)
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels = synthetic_data(workload)
    cfg = composed(workload, args)
    net = build_model(cfg.model)
    net.load_state_dict(weights)
    net.to(device)
    if args.channels_last:
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(net.parameters(), lr=workload.lr)
    loader = DataLoader(TensorDataset(images, labels), batch_size=workload.batch_size, shuffle=True)
    while connection.recv() == "epoch":
        connection.send(timed(lambda: plain_loop(net, loader, optimizer, device, batches, args), device))


def synthetic_data(workload: Workload) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(workload.examples, 1, workload.size, workload.size, generator=generator)
    return images, torch.randint(0, 10, (workload.examples,), generator=generator)


def plain_loop(net: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer, device: torch.device,
               batches: int, args: argparse.Namespace) -> None:
    """d2l's train_epoch_ch3: host batches copied per step, loss and accuracy read with .item()."""
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    total_loss, correct, seen = 0.0, 0.0, 0
    autocast_dtype = AMP_DTYPES[args.amp]
    for step, (x, y) in enumerate(loader):
        if step == batches:
            break
        x, y = x.to(device), y.to(device)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            y_hat = net(x)
            loss = loss_fn(y_hat, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(y)
        correct += (y_hat.argmax(dim=1) == y).sum().item()
        seen += len(y)


LOAD_BEFORE = os.getloadavg()[0]


def composed(workload: Workload, args: argparse.Namespace):
    # The digits config only supplies shapes here: resizing it gives the model this input size.
    overrides = [*workload.overrides, f"dataset.resize={workload.size}", f"device.type={args.device}", f"device.amp={args.amp}",
                 f"device.channels_last={'true' if args.channels_last else 'auto'}",
                 "device.compile=false", f"device.compile_mode={args.compile_mode}",
                 f"device.num_threads={args.threads if args.threads else 'null'}",
                 f"device.host_allocator={args.host_allocator}"]
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        return validate(compose(config_name="config", overrides=overrides))


def timed(function, device: torch.device) -> float:
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bf16_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """Achieved bf16 FLOP/s of a large square matmul: the ceiling a model run is compared with."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    seconds = timed(lambda: [a @ b for _ in range(repeats)], device)
    return 2 * size**3 * repeats / seconds


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def save(console: Console, device: torch.device) -> None:
    folder = Path(__file__).parent / "results"
    folder.mkdir(exist_ok=True)
    name = describe(device).replace(" ", "_").replace("/", "-")
    path = folder / f"{datetime.date.today()}_{name}_torch{torch.__version__.split('+')[0]}.txt"
    path.write_text(console.export_text())
    print(f"saved {path}")


if __name__ == "__main__":
    main()
