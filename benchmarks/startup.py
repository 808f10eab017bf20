"""How long dlrun takes to start, as ratios to `python -c "import torch"` measured in the same run.

    python benchmarks/startup.py                 # 5 repeats of each command, medians
    python benchmarks/startup.py --repeats 9 --wait-idle

Commands, each a fresh process, in turns (one repeat of every command, then the next repeat), so that a
change in the machine's load touches them alike: `python -c "import torch"`, a typo (`dlrun model=foo`,
which must fail before torch is imported), `dlrun --help`, and a whole `dlrun debug=smoke` run (the
default experiment, 1 epoch of 3 batches, into a temporary folder). Targets: typo and --help
<= 0.6x, the smoke run <= 2.5x of importing torch. The smoke run is measured as a user's every run
is, after a first one; that first run (scikit-learn imported to prepare the digits, which later runs
read from the dataset cache) is shown apart.

The smoke run is also compared with a plain PyTorch script doing the same work (`--plain-smoke`:
scikit-learn's digits and its stratified split, d2l's LeNet at 28x28, Adam, 3 training batches of
64, validation and test passes, a TensorBoard event file, a checkpoint and a matplotlib PNG):
what is left of dlrun's start-up beyond the libraries such a run needs.
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
    parser.add_argument("--plain-smoke", help=argparse.SUPPRESS)  # internal: the plain script, writing there
    args = parser.parse_args()
    if args.plain_smoke:
        _plain_smoke(Path(args.plain_smoke))
        return
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
            # The first run on a machine: scikit-learn imported to prepare the digits (an empty dataset cache).
            "first smoke": ([str(DLRUN), "debug=smoke", f"output_root={folder}/outputs"], 0),
            "plain smoke": ([sys.executable, __file__, "--plain-smoke", f"{folder}/plain"], 0),
        }
        load_before = os.getloadavg()[0]
        # The prepared digits in a folder of this benchmark's (not the user's ~/.cache/dlrun/datasets), made by
        # one unmeasured run, which also leaves the other caches (fonts, step times) as a user has them.
        kept = {"DLRUN_DATASET_CACHE": f"{folder}/datasets"}
        _run(*commands["smoke"], cwd=folder, env=kept)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for repeat in range(args.repeats):
            for name, (command, expected) in commands.items():
                fresh = {"DLRUN_DATASET_CACHE": f"{folder}/datasets_{repeat}"} if name == "first smoke" else kept
                times[name].append(_run(command, expected, cwd=folder, env=fresh))
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
    first = medians["first smoke"]
    print(f"| `dlrun debug=smoke`, the first time (digits prepared) | {first:.2f} | {first / torch_s:.2f}× | |")
    plain = medians["plain smoke"]
    print(f"| the same work as a plain PyTorch script | {plain:.2f} | {plain / torch_s:.2f}× | |")
    print(f"\n`dlrun debug=smoke` / the plain script: {medians['smoke'] / plain:.2f}×")


def _plain_smoke(folder: Path) -> None:
    """What `dlrun debug=smoke` does, as a user's plain script would (see the module docstring)."""
    import torch
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn
    from torch.nn import functional
    from torch.utils.tensorboard import SummaryWriter

    torch.manual_seed(0)
    images, labels = load_digits(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=0.2, random_state=0, stratify=labels)

    def tensors(x, y, count=128):
        pixels = torch.tensor(x[:count], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
        return functional.interpolate(pixels, size=28, mode="bilinear"), torch.tensor(y[:count])

    (train_inputs, train_targets), (test_inputs, test_targets) = tensors(train_x, train_y), tensors(test_x, test_y)
    model = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2), nn.Conv2d(6, 16, 5),
                          nn.Sigmoid(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.Sigmoid(),
                          nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    writer = SummaryWriter(folder / "tb")
    for batch in range(3):
        inputs, targets = train_inputs[64 * batch:64 * batch + 64], train_targets[64 * batch:64 * batch + 64]
        loss = functional.cross_entropy(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        writer.add_scalar("train/loss", loss.item(), batch)
    with torch.no_grad():
        for split, inputs, targets in (("val", train_inputs, train_targets), ("test", test_inputs, test_targets)):
            accuracy = (model(inputs).argmax(1) == targets).float().mean().item()
            writer.add_scalar(f"{split}/acc", accuracy, 1)
    writer.close()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, folder / "last.pt")
    figure = Figure()
    figure.add_subplot().plot([1], [loss.item()], marker="o")
    FigureCanvasAgg(figure).print_png(str(folder / "curves.png"))
    print(f"test acc {accuracy:.4f}")


def _run(command: list[str], expected: int, cwd: str, env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    elapsed = time.perf_counter() - started
    if done.returncode != expected:
        sys.exit(f"{' '.join(command)} exited {done.returncode}, not {expected}: {done.stderr.strip()[-500:]}")
    return elapsed


if __name__ == "__main__":
    main()
