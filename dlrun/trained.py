"""What dlrun-eval, dlrun-predict and dlrun-export share: a trained run loaded for use, and their error handling.

A run directory holds what it takes: `checkpoints/best.pt` and `last.pt` (weights and the
resolved config of the run, dlrun.checkpoint) and `data.json` (the data as the model sees it,
dlrun.data.card). The model is rebuilt from the checkpoint's own config, so it fits the weights
whatever the YAML groups say today.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun.checkpoint import BEST, LAST, load_checkpoint
from dlrun.data.card import CARD_FILE, DataCard
from dlrun.device import configure_backends, select_device, use_memory_format
from dlrun.errors import CheckpointError, DlrunError
from dlrun.models import build_model
from dlrun.precision import Precision
from dlrun.schema import validate

log = logging.getLogger("dlrun")
CHECKPOINTS = {"best": BEST, "last": LAST}


@dataclass
class TrainedRun:
    run_dir: Path
    checkpoint: Path
    epoch: int  # epochs completed when the checkpoint was written
    config: DictConfig  # the run's resolved config, as the checkpoint carries it
    card: DataCard
    model: nn.Module  # in eval mode, on `device`
    device: torch.device
    precision: Precision  # the run's device.amp: autocast as in training's evaluation


def load_run(run_dir: Path, which: str = "best", device: Optional[str] = None) -> TrainedRun:
    """The run at `run_dir` with its `which` checkpoint's weights (best.pt falls back to last.pt, as
    training's own test does when no epoch improved); `device` overrides the run's device.type."""
    run_dir = Path(run_dir)
    path = _checkpoint_path(run_dir, which)
    state = load_checkpoint(path)
    config = validate(OmegaConf.create(state["config"]))
    if device is not None:
        config.device.type = device
    configure_backends(config.device)
    chosen = select_device(config.device.type)
    model = build_model(config.model, config.regularization.dropout)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config builds: "
                              f"{str(error).splitlines()[0]}") from None
    model.to(chosen).eval()
    use_memory_format(model, config.device)  # the memory format training evaluated with (compilation is left out)
    return TrainedRun(run_dir, path, int(state["epoch"]), config, read_card(run_dir, config), model, chosen,
                      Precision(config.device.amp, chosen))


def read_card(run_dir: Path, config: DictConfig) -> DataCard:
    """data.json; a run from before training wrote it gets one made from its dataset, loaded again."""
    if (run_dir / CARD_FILE).exists():
        return DataCard.read(run_dir)
    from dlrun.data import load_splits

    log.info("%s has no %s (an older run): reading the dataset to describe it", run_dir, CARD_FILE)
    return DataCard.from_data(config, config.dataset.task, load_splits(config.dataset).extras)


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    if not run_dir.is_dir():
        raise CheckpointError(f"no run directory at {run_dir}")
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        folds = sorted(run_dir.glob("fold_*/checkpoints"))
        if folds:
            raise CheckpointError(f"{run_dir} is a K-fold run: use one fold's directory, e.g. {folds[0].parent}")
        raise CheckpointError(f"{run_dir} has no checkpoints/ folder: is it a dlrun run directory?")
    path = folder / CHECKPOINTS[which]
    if which == "best" and not path.exists() and (folder / LAST).exists():
        log.info("no best.pt in %s (no epoch improved the validation metric): using last.pt", folder)
        return folder / LAST
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The run directory, --checkpoint and --device: the arguments every tool takes."""
    parser.add_argument("run_dir", type=Path, help="a run directory, e.g. outputs/<date>/<time>")
    parser.add_argument("--checkpoint", choices=tuple(CHECKPOINTS), default="best",
                        help="which weights: best.pt (default) or last.pt")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                        help="where to run the model (default: the run's device.type)")


def tool_main(prog: str, body: Callable[[], Any]) -> None:
    """Run a tool's `body`; a failure is one line `<prog>: error: ...` and an exit code (2: bad input).

    HYDRA_FULL_ERROR=1 shows the traceback instead, as for `dlrun`.
    """
    from dlrun.cli import describe_error, exit_code

    try:
        body()
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as error:
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not isinstance(error, DlrunError):
            raise
        print(f"{prog}: error: {describe_error(error)}", file=sys.stderr)
        sys.exit(exit_code(error))
