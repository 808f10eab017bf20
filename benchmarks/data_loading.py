"""One epoch of 60,000 28x28 images: dlrun's tensor path against DataLoader(TensorDataset(...)).

Both loops shuffle, use the same batch size and train the same small model (softmax
regression, d2l 4.1) with SGD, so the difference is the data path alone: TensorLoader indexes
device-resident tensors with a permutation; the DataLoader collates samples one by one on the
host and copies every batch to the device.

    python benchmarks/data_loading.py [--device cuda] [--batch-size 256] [--model none]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dlrun.data.loader import TensorLoader
from dlrun.data.splits import TensorSplit


def epoch_seconds(batches, model: nn.Module | None, optimizer, device: torch.device) -> float:
    """Time one pass: every batch on the device, and a training step when there is a model."""
    loss_sum = torch.zeros((), device=device)
    start = time.perf_counter()
    for inputs, targets in batches:
        inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        if model is None:
            loss_sum += inputs.sum()
            continue
        loss = nn.functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    loss_sum.item()  # one sync at the end, so queued device work is counted
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", choices=("linear", "none"), default="linear")
    parser.add_argument("--examples", type=int, default=60_000)
    parser.add_argument("--repeats", type=int, default=3, help="epochs per path, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads (1 by default: stable numbers on a shared machine)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.rand(args.examples, 1, 28, 28)
    labels = torch.randint(0, 10, (args.examples,))

    def fresh_model():
        if args.model == "none":
            return None, None
        model = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)).to(device)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    tensor_loader = TensorLoader(TensorSplit(images.to(device), labels.to(device)), args.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
    data_loader = DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=True,
                             generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda")
    # A warm-up pass of each (allocator, kernels, first-touch page faults), then alternating timed
    # epochs, so a burst of load from other processes hits both paths alike; the fastest counts.
    for loader in (tensor_loader, data_loader):
        epoch_seconds(loader, *fresh_model(), device)
    times: dict[str, list[float]] = {"tensor": [], "loader": []}
    for _ in range(args.repeats):
        times["tensor"].append(epoch_seconds(tensor_loader, *fresh_model(), device))
        times["loader"].append(epoch_seconds(data_loader, *fresh_model(), device))
    tensor_s, loader_s = min(times["tensor"]), min(times["loader"])
    print(f"device {device}, {args.examples:,} images 28x28, batch {args.batch_size}, model {args.model}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"TensorLoader (dlrun)              {tensor_s:8.3f} s/epoch")
    print(f"DataLoader(TensorDataset(...))    {loader_s:8.3f} s/epoch")
    print(f"ratio                             {loader_s / tensor_s:8.1f}x faster")


if __name__ == "__main__":
    main()
