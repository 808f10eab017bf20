"""A trained run loaded for use: what dlrun-eval, dlrun-predict and dlrun-export start from.

A run directory holds what it takes: `checkpoints/best.pt` and `last.pt` (weights and the
resolved config of the run, dlrun.run.checkpoint) and `data.json` (the data as the model sees it,
dlrun.data.card). The model is rebuilt from the checkpoint's own config, so it fits the weights
whatever the YAML groups say today.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dlrun.config import validate
from dlrun.data.card import CARD_FILE, DataCard
from dlrun.engine.device import configure_backends, select_device, use_memory_format
from dlrun.engine.precision import Precision
from dlrun.errors import CheckpointError
from dlrun.models import build_model
from dlrun.run.checkpoint import BEST, LAST, load_checkpoint
from dlrun.run.run_dir import REFIT_DIR

log = logging.getLogger("dlrun")
CHECKPOINTS = {"best": BEST, "last": LAST}


@dataclass
class LoadedRun:
    run_dir: Path
    checkpoint: Path
    epoch: int  # epochs completed when the checkpoint was written
    config: DictConfig  # the run's resolved config, as the checkpoint carries it
    card: DataCard
    model: nn.Module  # in eval mode, on `device`
    device: torch.device
    precision: Precision  # the run's device.amp: autocast as in training's evaluation


def load_run(run_dir: Path, which: str = "best", device: Optional[str] = None) -> LoadedRun:
    """The run at `run_dir` with its `which` checkpoint's weights (best.pt falls back to last.pt, as
    training's own test does when no epoch improved); `device` overrides the run's device.type."""
    run_dir = _model_dir(Path(run_dir))
    path = _checkpoint_path(run_dir, which)
    state = load_checkpoint(path)
    config = validate(OmegaConf.create(state["config"]))
    if device is not None:
        config.device.type = device
    configure_backends(config.device)
    chosen = select_device(config.device.type)
    if config.model.get("weights"):  # the checkpoint's weights replace those training started from
        config.model.weights = None
    model = build_model(config.model, config.regularization.dropout)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise CheckpointError(f"checkpoint {path} does not fit the model its config builds: "
                              f"{str(error).splitlines()[0]}") from None
    model.to(chosen).eval()
    use_memory_format(model, config.device)  # the memory format training evaluated with (compilation is left out)
    return LoadedRun(run_dir, path, int(state["epoch"]), config, read_card(run_dir, config), model, chosen,
                      Precision(config.device.amp, chosen))


def read_card(run_dir: Path, config: DictConfig) -> DataCard:
    """data.json; a run from before training wrote it gets one made from its dataset, loaded again."""
    if (run_dir / CARD_FILE).exists():
        return DataCard.read(run_dir)
    from dlrun.data.build import load_splits

    log.info("%s has no %s (an older run): reading the dataset to describe it", run_dir, CARD_FILE)
    return DataCard.from_data(config, config.dataset.task, load_splits(config.dataset).extras)


def _model_dir(run_dir: Path) -> Path:
    """The run directory whose model is used: a K-fold run's refit on every training row when it has one."""
    refit = run_dir / REFIT_DIR
    if not (run_dir / "checkpoints").is_dir() and (refit / "checkpoints").is_dir():
        log.info("%s is a K-fold run: using its refit on every training row, %s", run_dir, refit)
        return refit
    return run_dir


def _checkpoint_path(run_dir: Path, which: str) -> Path:
    if not run_dir.is_dir():
        raise CheckpointError(f"no run directory at {run_dir}")
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        folds = sorted(run_dir.glob("fold_*/checkpoints"))
        if folds:
            raise CheckpointError(f"{run_dir} is a K-fold run without a refit (trainer.kfold_refit=true): use one "
                                  f"fold's directory, e.g. {folds[0].parent}")
        raise CheckpointError(f"{run_dir} has no checkpoints/ folder: is it a dlrun run directory?")
    path = folder / CHECKPOINTS[which]
    if which == "best" and not path.exists() and (folder / LAST).exists():
        log.info("no best.pt in %s (no epoch improved the validation metric): using last.pt", folder)
        return folder / LAST
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    return path
