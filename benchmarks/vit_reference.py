"""dlrun's ViT recipe against a plain PyTorch ViT of the same size, data, optimizer and epochs: accuracy and speed.

The plain ViT is d2l 11.8's, written here with nothing of dlrun's model code: a strided convolution
embeds the patches, a class token and learned positions are added, pre-norm blocks of
`nn.MultiheadAttention` and a GELU MLP follow, LayerNorm + Linear classify the class token. It is
trained by d2l's plain loop (shuffled mini-batches, `.item()` per step) on the very train / val /
test tensors dlrun's run uses (the bundled digits, dlrun's split for the seed), with the test
accuracy taken at the best validation epoch, as dlrun reports it. Both run in this process, one
after the other, seed by seed.

    python benchmarks/vit_reference.py                          # d2l/vit_digits, seeds 0 1 2
    python benchmarks/vit_reference.py --seeds 0 --epochs 5     # quicker
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from torch import nn

from dlrun.config import validate
from dlrun.data.sklearn_bundled import load_digits
from dlrun.data.splits import split_off
from dlrun.train import run

RECIPE = "d2l/vit_digits"


class PlainViT(nn.Module):
    """d2l 11.8's ViT in plain PyTorch."""

    def __init__(self, channels: int, image_size: int, patch_size: int, hidden: int, mlp: int, heads: int,
                 blocks: int, dropout: float, num_classes: int) -> None:
        super().__init__()
        self.patches = nn.Conv2d(channels, hidden, kernel_size=patch_size, stride=patch_size)
        steps = (image_size // patch_size) ** 2 + 1
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embedding = nn.Parameter(torch.randn(1, steps, hidden) * 0.02)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(PlainBlock(hidden, mlp, heads, dropout) for _ in range(blocks))
        self.head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patches(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.dropout(x + self.pos_embedding)
        for block in self.blocks:
            x = block(x)
        return self.head(x[:, 0])


class PlainBlock(nn.Module):
    def __init__(self, hidden: int, mlp: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.attention = nn.MultiheadAttention(hidden, heads, dropout=dropout, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Dropout(dropout), nn.Linear(mlp, hidden),
                                 nn.Dropout(dropout))
        self.attention_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm1(x)
        x = x + self.attention_dropout(self.attention(y, y, y, need_weights=False)[0])
        return x + self.mlp(self.norm2(x))


def recipe_config(seed: int, epochs: int | None, out: Path):
    overrides = [f"+experiment={RECIPE}", f"seed={seed}", f"output_root={out}"]
    overrides += [f"trainer.epochs={epochs}"] if epochs else []
    with initialize_config_module(version_base="1.3", config_module="dlrun.conf"):
        return compose(config_name="config", overrides=overrides)


def accuracy(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(1) == targets).float().mean().item()


def plain_run(cfg, seed: int) -> tuple[float, float, int]:
    """(test accuracy at the best validation epoch, seconds, parameters) of the plain ViT and loop."""
    splits = load_digits(cfg.dataset.test_fraction, seed)
    train, val = split_off(splits.train, cfg.dataset.val_fraction, seed=seed)
    m = cfg.model
    torch.manual_seed(seed)
    model = PlainViT(1, 8, m.patch_size, m.hidden_size, m.mlp_size, m.num_heads, m.num_layers,
                     cfg.regularization.dropout, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optimizer.lr)
    best_val, best_state = -1.0, None
    start = time.perf_counter()
    for _ in range(cfg.trainer.epochs):
        model.train()
        for batch in torch.randperm(len(train.inputs)).split(cfg.trainer.batch_size):
            loss = F.cross_entropy(model(train.inputs[batch]), train.targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # d2l's loop reads the loss every step
        val_accuracy = accuracy(model, val.inputs, val.targets)
        if val_accuracy > best_val:
            best_val, best_state = val_accuracy, copy.deepcopy(model.state_dict())
    seconds = time.perf_counter() - start
    model.load_state_dict(best_state)
    return accuracy(model, splits.test.inputs, splits.test.targets), seconds, sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in args.seeds:
            cfg = recipe_config(seed, args.epochs, Path(folder))
            start = time.perf_counter()
            summary = run(cfg, run_dir=Path(folder) / f"run{seed}")
            dlrun_seconds = time.perf_counter() - start
            typed = validate(cfg)
            plain_accuracy, plain_seconds, plain_params = plain_run(typed, seed)
            rows.append((seed, summary["test"]["test/acc"], plain_accuracy, dlrun_seconds, plain_seconds,
                         summary["model"]["params"], plain_params))
    print(f"\n{RECIPE}, {args.threads} thread(s); test accuracy at the best validation epoch")
    print("| seed | dlrun test acc | plain PyTorch test acc | dlrun s (whole run) | plain s (training) |")
    print("|---|---|---|---|---|")
    for seed, ours, plain, ours_s, plain_s, _, _ in rows:
        print(f"| {seed} | {ours:.3f} | {plain:.3f} | {ours_s:.1f} | {plain_s:.1f} |")
    if len(rows) > 1:
        print(f"| mean | {statistics.mean(r[1] for r in rows):.3f} | {statistics.mean(r[2] for r in rows):.3f} | | |")
    print(f"parameters: dlrun {rows[0][5]:,}, plain {rows[0][6]:,}")


if __name__ == "__main__":
    main()
