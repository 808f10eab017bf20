"""What a run directory says about itself: status.json, summary.json and their ingredients."""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

import dlrun
from dlrun.atomic import atomic_write

STATUS_FILE = "status.json"
SUMMARY_FILE = "summary.json"
# Keys that may change between a run and its continuation without making it another experiment.
RESUME_INSENSITIVE_KEYS = ("trainer.resume", "trainer.epochs", "output_root", "name", "sweep.resume")
# What a run writes while training; cleared before a sweep job is run again in the same directory.
TRAINING_OUTPUTS = ("tb", "checkpoints", "metrics.jsonl", SUMMARY_FILE, "model_summary.txt")


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` atomically: a reader sees the old file or the new one, never half of one."""
    atomic_write(path, lambda temporary: temporary.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved experiment config, blind to the keys a continuation may change."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("hydra", None)
    for dotted in RESUME_INSENSITIVE_KEYS:
        section, _, key = dotted.rpartition(".")
        (container.get(section, {}) if section else container).pop(key, None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:16]


class RunStatus:
    """status.json: running → completed | failed | diverged | interrupted, with the error."""

    def __init__(self, run_dir: Path, fingerprint: Optional[str]) -> None:
        self.path = Path(run_dir) / STATUS_FILE
        self.started = time.time()
        self.fields: dict[str, Any] = {"config_fingerprint": fingerprint}

    def write(self, status: str, **fields: Any) -> None:
        self.fields.update(fields)
        write_json(self.path, {"status": status, "started": _iso(self.started), "updated": _iso(time.time()),
                               **self.fields})


def completed_result(run_dir: Path, fingerprint: str, epochs: int) -> Optional[dict[str, Any]]:
    """summary.json of `run_dir` if it completed `epochs` epochs of this config, else None."""
    try:
        status = read_json(Path(run_dir) / STATUS_FILE)
        summary = read_json(Path(run_dir) / SUMMARY_FILE)
    except (OSError, ValueError):
        return None
    same = status.get("status") == "completed" and status.get("config_fingerprint") == fingerprint
    return summary if same and summary.get("epochs_completed") == epochs else None


def clear_training_outputs(run_dir: Path) -> None:
    """Remove an earlier attempt's event files, checkpoints and metrics, so a rerun starts clean."""
    for name in TRAINING_OUTPUTS:
        path = Path(run_dir) / name
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
    """The most recent run under `output_root` with this config and a last checkpoint."""
    candidates = []
    for status_file in Path(output_root).glob(f"**/{STATUS_FILE}"):
        run_dir = status_file.parent
        last = run_dir / "checkpoints" / "last.pt"
        if run_dir.resolve() == Path(exclude).resolve() or not last.exists():
            continue
        try:
            if read_json(status_file).get("config_fingerprint") == fingerprint:
                candidates.append((last.stat().st_mtime, run_dir))
        except (OSError, ValueError):
            continue
    return max(candidates)[1] if candidates else None


def _iso(timestamp: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(timestamp))
