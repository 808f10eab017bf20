"""What a run directory holds besides status.json: which config it ran (the fingerprint), whether it
completed or saved a checkpoint, where the latest run of a config is, and the environment it ran in.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

import dlrun
from dlrun.atomic import read_json
from dlrun.run.status import ATTEMPTS_LOG, STATUS_FILE, read_status

SUMMARY_FILE = "summary.json"
# Keys that may change between a run and its continuation without making it another experiment.
RESUME_INSENSITIVE_KEYS = ("trainer.resume", "trainer.epochs", "trainer.save_every_steps", "trainer.save_every_minutes",
                           "trainer.log_grad_norms", "output_root", "name", "sweep.resume", "device.dist_timeout_min")
# Keys added to every config after runs were first written, at the values that do what their absence did:
# left out of the fingerprint, so an older run keeps its own and can be continued.
# (A dataset's new standardize_targets=true is left in: it changes what a regression run trains.)
INERT_NEW_KEYS = {"trainer.kfold_refit": False, "model.weights": None, "dataset.loss": None, "dataset.pos_weight": None,
                  "dataset.threshold": 0.5, "dataset.standardize_targets": False,
                  # model.activation null is the family's own (ReLU for the CNNs), as before the key existed
                  "model.activation": None, "model.activation_param": None, "model.init_param": None}
# New default values that stand for an old one in the fingerprint: a run made before them continues under them.
# device.num_threads=auto (the cores free) replaced null (PyTorch's default): neither is part of the experiment.
RENAMED_DEFAULTS = {"device.num_threads": ("auto", None)}
# What a run writes while training; cleared (with any fold_*/) before a run without a checkpoint starts
# again from scratch: all of it came after the last checkpoint (there is none), as the metrics lines a
# resume drops do.
REFIT_DIR = "refit"  # a K-fold run's refit on every training row (dlrun.run.kfold)
TRAINING_OUTPUTS = ("tb", "checkpoints", "metrics.jsonl", SUMMARY_FILE, "model_summary.txt", "data.json", "curves.png")
# What a run of another config leaves when a sweep job runs again in its directory: moved into earlier/<n>/.
RUN_RECORDS = (*TRAINING_OUTPUTS, STATUS_FILE, ".hydra", "forecasts.png", REFIT_DIR)
EARLIER = "earlier"


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved experiment config, blind to the keys a continuation may change (and to
    INERT_NEW_KEYS at their inert values)."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    for dotted in RESUME_INSENSITIVE_KEYS:
        section, _, key = dotted.rpartition(".")
        (container.get(section, {}) if section else container).pop(key, None)
    for dotted, (new, old) in RENAMED_DEFAULTS.items():
        section, _, key = dotted.rpartition(".")
        if container.get(section, {}).get(key) == new:
            container[section][key] = old
    for dotted, inert in INERT_NEW_KEYS.items():
        section, _, key = dotted.rpartition(".")
        if key in container.get(section, {}) and container[section][key] == inert:
            del container[section][key]
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


def completed_summary(run_dir: Path, status: dict[str, Any], epochs: int) -> Optional[dict[str, Any]]:
    """summary.json of `run_dir` if its `status` says it completed, with nothing left to train, else None.

    Nothing is left when it trained `epochs` epochs (or more), or early stopping ended it.
    """
    try:
        summary = read_json(Path(run_dir) / SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    if status.get("status") != "completed" or not isinstance(summary, dict):
        return None
    finished = summary.get("epochs_completed", 0) >= epochs or summary.get("stopped_early") is not None
    return summary if finished else None


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first: its last.pt (and best.pt, which a full disk may leave alone)
    or (trainer.kfold) its folds' last.pt."""
    own = Path(run_dir) / "checkpoints"
    paths = [own / "last.pt", own / "best.pt", *Path(run_dir).glob("fold_*/checkpoints/last.pt")]
    found = [(path.stat().st_mtime, str(path)) for path in paths if path.is_file()]
    return [Path(path) for _, path in sorted(found, reverse=True)]


def has_checkpoint(run_dir: Path) -> bool:
    """A last.pt to continue from: the run's own, or (trainer.kfold) any fold's."""
    return bool(checkpoint_paths(run_dir))


def last_checkpoint_time(run_dir: Path) -> Optional[float]:
    """Modification time of the newest last.pt of the run (or of its folds), None when there is none."""
    paths = checkpoint_paths(run_dir)
    return paths[0].stat().st_mtime if paths else None


def holds_run_files(run_dir: Path) -> bool:
    """Whether `run_dir` holds what a run writes (status, history, checkpoints, metrics), not just an empty folder."""
    names = (STATUS_FILE, ATTEMPTS_LOG, "metrics.jsonl", SUMMARY_FILE)
    return has_checkpoint(run_dir) or any((Path(run_dir) / name).exists() for name in names)


def set_aside(run_dir: Path) -> Optional[Path]:
    """Move a run's records and outputs into `earlier/<n>/` (the next free n); return that folder (None: nothing).

    dlrun.log and attempts.jsonl stay: they are the directory's history, appended to by every attempt.
    """
    present = [Path(run_dir) / name for name in RUN_RECORDS if (Path(run_dir) / name).exists()]
    present += sorted(Path(run_dir).glob("fold_*"))
    if not present:
        return None
    number = 1 + max([int(p.name) for p in (Path(run_dir) / EARLIER).glob("*") if p.name.isdigit()], default=0)
    folder = Path(run_dir) / EARLIER / str(number)
    folder.mkdir(parents=True)
    for path in present:
        path.rename(folder / path.name)
    return folder


def written_folders(run_dir: Path) -> list[Path]:
    """The folders a run writes files into atomically: its own, .hydra/, each fold's and the refit's, and their
    checkpoints/ (where a killed write leaves its temporary file)."""
    run_dir = Path(run_dir)
    parts = [run_dir, *sorted(run_dir.glob("fold_*")), run_dir / REFIT_DIR]
    return [run_dir / ".hydra", *(folder for part in parts for folder in (part, part / "checkpoints"))]


def clear_training_outputs(run_dir: Path) -> None:
    """Remove an earlier attempt's event files, checkpoints, metrics, folds and refit, so a rerun starts clean."""
    for path in [*(Path(run_dir) / name for name in TRAINING_OUTPUTS), *Path(run_dir).glob("fold_*"),
                 Path(run_dir) / REFIT_DIR]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def environment() -> dict[str, Any]:
    """Versions and the git commit: enough to rerun the experiment later."""
    import torch  # here, so that reading run directories (dlrun-report) does not load torch

    return {
        "dlrun": dlrun.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,
        "git_commit": git_commit(),
    }


def git_commit() -> Optional[str]:
    """The commit of the working directory's repository, if it is one (dirty trees are marked)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def find_latest_run(output_root: Path, fingerprint: str, exclude: Path) -> Optional[Path]:
    """The run under `output_root` with this config and the most recently written checkpoint."""
    candidates = []
    for status_file in Path(output_root).glob(f"**/{STATUS_FILE}"):
        run_dir = status_file.parent
        if run_dir.resolve() == Path(exclude).resolve() or run_dir.name.startswith("fold_"):
            continue
        status = read_status(run_dir)
        saved = last_checkpoint_time(run_dir)
        if status is not None and status.get("config_fingerprint") == fingerprint and saved is not None:
            candidates.append((saved, str(run_dir)))
    return Path(max(candidates)[1]) if candidates else None


