"""Per model of conf/model/: CPU training throughput and forward FLOPs at its design input size.

dlrun's training path (the model as `dlrun` prepares it: device.channels_last=auto gives conv nets
NHWC on the CPU; TensorLoader + `train_one_epoch`, losses kept on the device) is timed against a
plain PyTorch loop in d2l's style (NCHW, `DataLoader(TensorDataset)`, `.item()` per step) on the
same synthetic images, the same initial weights, optimizer and batch size, in one run. Both run in
this process, set up as `dlrun` sets it up (`configure_backends`), so dlrun's host allocator
reaches the plain loop too: training_speed.py measures that difference with the plain loop in a
process of its own. Models without a design size (MLP, recurrent, torchvision) get 28x28
(Fashion-MNIST's size).

    python benchmarks/models.py                       # every model, a few batches each
    python benchmarks/models.py --models lenet resnet --batches 20 --batch-size 64
    python benchmarks/models.py --channels-last false    # dlrun in NCHW too: what NHWC adds
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from dlrun.config import validate
from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit
from dlrun.engine.device import configure_backends, prepare_model
from dlrun.engine.loop import Trainer, train_one_epoch
from dlrun.engine.optim import build_optimizer
from dlrun.engine.precision import Precision
from dlrun.models import build_model
from dlrun.models.summary import summarize_model
from dlrun.tasks import Classification

# Classifiers only: detection models (`for_task: detection`) have benchmarks/detection_speed.py.
MODELS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "model").glob("*.yaml")
                if OmegaConf.load(p).get("for_task") is None)
FALLBACK_SIZE = 28
LR = 0.01


def config(*overrides: str):
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        return compose(config_name="config", overrides=list(overrides))


def plain_loop(model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader) -> float:
    """d2l's loop: per-sample collation, a host sync per step for the running loss."""
    model.train()
    total = 0.0
    for inputs, targets in loader:
        loss = F.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def bench(name: str, batches: int, batch_size: int, warmup: int, channels_last: str) -> dict:
    """Both loops on identical data and weights: warm-up batches first, then `batches` timed ones."""
    overrides = [f"model={name}", "optimizer=sgd", f"optimizer.lr={LR}", f"device.channels_last={channels_last}"]
    if config(f"model={name}").model.input_size is None:
        overrides.append(f"dataset.resize={FALLBACK_SIZE}")
    cfg = validate(config(*overrides))
    configure_backends(cfg.device)
    torch.manual_seed(0)
    examples = batches * batch_size
    images = torch.rand(examples, *cfg.dataset.input_shape)
    labels = torch.randint(0, cfg.dataset.num_outputs, (examples,))
    model = build_model(cfg.model)
    twin = copy.deepcopy(model)
    flops = summarize_model(model, images[:1]).flops
    cfg.device.compile = False  # eager: the compile's payoff is training_speed.py's --compile
    net = prepare_model(model, cfg.device)

    task = Classification()
    precision = Precision("off", torch.device("cpu"))
    dlrun_optimizer = build_optimizer(cfg.optimizer, model, cfg.regularization)
    plain_optimizer = torch.optim.SGD(twin.parameters(), lr=LR)
    split = TensorSplit(images, labels)
    dlrun_loader = TensorLoader(split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    plain_loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True)
    warm = warmup * batch_size
    trainer = Trainer(net, task, dlrun_optimizer, precision)
    train_one_epoch(trainer, TensorLoader(split.select(slice(0, warm)), batch_size))
    plain_loop(twin, plain_optimizer, DataLoader(TensorDataset(images[:warm], labels[:warm]), batch_size=batch_size))

    dlrun_s = seconds(lambda: train_one_epoch(trainer, dlrun_loader))
    plain_s = seconds(lambda: plain_loop(twin, plain_optimizer, plain_loader))
    return {"model": name, "input": "x".join(map(str, cfg.dataset.input_shape)), "gflops": flops / 1e9,
            "dlrun": examples / dlrun_s, "plain": examples / plain_s, "ratio": plain_s / dlrun_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--batches", type=int, default=3, help="timed batches per loop (default 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per loop first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--channels-last", default="auto", choices=["auto", "true", "false"],
                        help="dlrun's device.channels_last (false: NCHW like the plain loop)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.batches} timed batches per loop, device.channels_last={args.channels_last}; "
          "ratio = dlrun img/s / plain img/s")
    print(f"{'model':<12} {'input':>11} {'fwd GFLOPs':>10} {'dlrun img/s':>12} {'plain img/s':>12} {'ratio':>6}")
    for name in args.models:
        row = bench(name, args.batches, args.batch_size, args.warmup, args.channels_last)
        print(f"{row['model']:<12} {row['input']:>11} {row['gflops']:>10.3f} {row['dlrun']:>12.1f} "
              f"{row['plain']:>12.1f} {row['ratio']:>5.2f}x", flush=True)


if __name__ == "__main__":
    main()
