"""Every scheduler preset drives the learning rate as torch's reference does, also across a resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch.optim import lr_scheduler

from conftest import compose_config
from dlrun.config import validate
from dlrun.errors import ConfigError
from dlrun.run import checkpoint
from dlrun.train import run

SCHEDULERS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "scheduler").glob("*.yaml"))
EPOCHS, BATCHES, LR = 6, 2, 0.5
# Softmax regression on digits: tiny and fast. Augmentation draws random numbers every batch, so
# an exact resume also needs the RNG states restored.
SETUP = ("model=softmax", "optimizer=momentum", f"optimizer.lr={LR}", f"trainer.epochs={EPOCHS}",
         f"trainer.limit_batches={BATCHES}", "trainer.batch_size=32", "regularization.augment=flip_crop_jitter")
# Settings that make each schedule change the rate within a 6-epoch run.
SHORTER = {
    "step": ("scheduler.step_size=2",),
    "multistep": ("scheduler.milestones=[2,4]",),
    # ReduceLROnPlateau: demand a 50 % relative improvement, so the rate is cut every other epoch.
    "plateau": ("scheduler.patience=1", "scheduler.threshold=0.5"),
}


def logged(run_dir: Path, key: str) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line[key] for line in lines if key in line]


def reference_lrs(name: str, val_acc: list[float]) -> list[float]:
    """The rate each epoch logs (after that epoch's batches), from torch's schedulers stepped by hand."""
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=LR, momentum=0.9)
    per_batch = False
    if name == "step":
        reference = lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    elif name == "multistep":
        reference = lr_scheduler.MultiStepLR(optimizer, milestones=[2, 4], gamma=0.5)
    elif name == "onecycle":
        reference = lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=EPOCHS * BATCHES, cycle_momentum=False)
        per_batch = True
    elif name == "plateau":
        reference = lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.1, patience=1, threshold=0.5)
    elif name == "cosine":  # closed form: 25 % linear warmup from lr/10, then cosine to 0
        warmup, decay = round(0.25 * EPOCHS), EPOCHS - round(0.25 * EPOCHS)
        return [LR * (0.1 + 0.9 * t / warmup) if t < warmup else LR * (1 + math.cos(math.pi * (t - warmup) / decay)) / 2
                for t in range(EPOCHS)]
    else:
        raise AssertionError(f"no reference for scheduler {name}: add one")
    rates = []
    for epoch in range(EPOCHS):
        for _ in range(BATCHES if per_batch else 0):
            optimizer.step()
            reference.step()
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if isinstance(reference, lr_scheduler.ReduceLROnPlateau):
            reference.step(val_acc[epoch])
        elif not per_batch:
            reference.step()
    return rates


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "none"])
def test_learning_rates_match_torch_and_survive_a_resume(name, cfg_for, tmp_path, monkeypatch):
    overrides = (*SETUP, f"scheduler={name}", *SHORTER.get(name, ()))
    run(cfg_for(*overrides), run_dir=tmp_path / "straight")
    rates = logged(tmp_path / "straight", "lr")
    assert rates == pytest.approx(reference_lrs(name, logged(tmp_path / "straight", "val/acc")), rel=1e-9, abs=1e-12)
    assert len(set(rates)) > 1  # the schedule did change the rate

    # Interrupt right after epoch 3's last.pt is written, then resume to the end.
    save = checkpoint.save_checkpoint

    def save_then_interrupt(path, state):
        save(path, state)
        if path.name == checkpoint.LAST and state["epoch"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(cfg_for(*overrides), run_dir=tmp_path / "first")
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    run(cfg_for(*overrides, f"trainer.resume={tmp_path / 'first'}"), run_dir=tmp_path / "second")
    assert logged(tmp_path / "first", "lr") == rates  # continued in place: one history
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "first" / "checkpoints" / "last.pt", weights_only=True)
    for key, weights in straight["model"].items():
        assert torch.equal(weights, resumed["model"][key]), key


def test_onecycle_total_steps_follow_epochs_and_batches(cfg_for, tmp_path):
    run(cfg_for(*SETUP, "scheduler=onecycle", "trainer.epochs=2", "trainer.limit_batches=3"), run_dir=tmp_path / "r")
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    assert state["total_steps"] == 2 * 3 and state["last_epoch"] == 6


@pytest.mark.parametrize("overrides,message", [
    (("scheduler=plateau", "scheduler.interval=step"), "scheduler.interval=step cannot work for a metric-driven"),
    (("scheduler=cosine", "scheduler.interval=batch"), "scheduler.interval='batch' is not one of: epoch, step"),
])
def test_bad_scheduler_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_config(*overrides))


def test_plateau_on_another_metric_needs_a_mode(cfg_for, tmp_path):
    with pytest.raises(ConfigError, match="scheduler.mode must be min or max"):
        run(cfg_for(*SETUP, "scheduler=plateau", "scheduler.monitor=val/loss"), run_dir=tmp_path / "r")
    summary = run(cfg_for(*SETUP, "scheduler=plateau", "scheduler.monitor=val/loss", "scheduler.mode=min",
                          "trainer.epochs=1"), run_dir=tmp_path / "ok")
    assert summary["epochs_completed"] == 1
