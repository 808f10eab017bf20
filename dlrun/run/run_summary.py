"""What summary.json holds: a run's results, its best epoch, its device and model, the environment it ran in."""

from __future__ import annotations

from typing import Any, Optional

from omegaconf import DictConfig

from dlrun.engine.compiling import compile_report
from dlrun.engine.position import TrainingProgress
from dlrun.engine.setup import Training
from dlrun.models.summary import ModelSummary
from dlrun.run.run_dir import environment


def run_summary(cfg: DictConfig, training: Training, progress: TrainingProgress, test_metrics: dict[str, float],
                duration: float, model_summary: ModelSummary,
                run_environment: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """summary.json of a completed training run (dlrun.train, and each member of a fused sweep group, which
    share one `run_environment`: versions and the git commit, read once)."""
    ranks = training.trainer.ranks
    return {
        "status": "completed",
        "epochs_completed": progress.epoch,
        "monitor": training.monitor,
        "mode": training.trainer.task.mode,
        "best_epoch": progress.best_epoch,
        "best_value": progress.best_value,
        "stopped_early": progress.stopped_early,  # the epoch early stopping ended the run, or null
        "final": progress.history,
        "test": test_metrics,  # empty without a test split
        "examples": {split: len(getattr(training.data, split).split) for split in ("train", "val", "test")},
        "duration_s": duration,
        "device": str(training.device),
        "world_size": ranks.world,  # processes that trained it; each took batch_size_per_rank of every batch
        "batch_size_per_rank": cfg.trainer.batch_size // ranks.world,
        "model": {"params": model_summary.total_params, "flops_per_example": model_summary.flops},
        "resumed_from": progress.resumed_from,
        "compile": compile_report(training.net),  # null when device.compile=false
        "environment": run_environment if run_environment is not None else environment(),
    }
