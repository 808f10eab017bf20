"""What every task does with a batch: the hooks the training loop and evaluation call.

Per batch a task returns a small tensor of sums that stays on the device; the loop adds
them up and reads them once per epoch, so no step waits for the host. Tasks that need more
than a forward pass per batch (a language model's hidden state, its text samples, a detector's
targets, mAP and pictures) do it through the hooks `start_pass`, `forward`, `carried_state`,
`epoch_texts` and `epoch_images`, so the loop stays the same for every task; `speed_metrics` adds
a task's own unit of speed (tokens/s) and `after_test` its own final evaluation (multi-step
forecasts and their figure). What the tools write for a task (dlrun-eval's files, dlrun-predict's
rows) is theirs: dlrun.tools.outputs.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
from omegaconf import DictConfig

from dlrun.errors import ConfigError

if TYPE_CHECKING:
    from dlrun.data.build import Data


class Task:
    """How a batch goes through the model; subclasses say how it is scored."""

    metric: str  # the validation metric that picks the best checkpoint
    mode: str  # "max" or "min": which direction of `metric` is better
    default_grad_clip: Optional[float] = None  # used when regularization.grad_clip is null
    # The outputs per example the task reads (the head's size), checked against the model before training
    # (dlrun.tasks.model_check); None: the task's model has outputs of its own form (a detector, a language model).
    expected_outputs: Optional[int] = None
    head = ""  # what those outputs are, for messages: "one output per class"

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Task":
        """Build from the whole run config (cfg.dataset, cfg.regularization, ...) and the loaded data."""
        return cls()

    def start_pass(self, training: bool) -> None:
        """Called before every training epoch and every evaluation."""

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Any:
        """The model's outputs for a batch; `targets` are there for models that compute their own loss."""
        return model(inputs)

    def epoch_texts(self, model: torch.nn.Module) -> dict[str, str]:
        """Text to log at the end of a training epoch (TensorBoard's TEXT tab), by tag."""
        return {}

    def epoch_images(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """Pictures (uint8, 3 x H x W) to log at the end of a training epoch (TensorBoard's IMAGES tab), by tag."""
        return {}

    def carried_state(self) -> Any:
        """What the task carries from one batch to the next (tensors), saved with a mid-epoch position."""
        return None

    def restore_carried_state(self, state: Any) -> None:
        """Continue a pass where `carried_state` was taken (called after `start_pass`)."""


    def speed_metrics(self, examples_per_sec: float) -> dict[str, float]:
        """Training speed in the task's own units, logged every epoch next to examples_per_sec."""
        return {}

    def after_test(self, model: torch.nn.Module, run_dir: Path) -> dict[str, float]:
        """Extra evaluation after the test pass, on the same (best) weights: metrics named
        `<group>/<name>`, reported with the test metrics; it may write files (figures) into `run_dir`."""
        return {}


# The target options a task kind reads (dataset.<key>), so that setting one for another kind is an error, not ignored.
TARGET_OPTIONS = {"pos_weight": ("binary", "multilabel"), "loss": ("regression",)}


def refuse_other_options(dataset: DictConfig, task: str) -> None:
    """ConfigError for a target option set (not null) that `task` does not read, e.g. dataset.loss for binary."""
    for key, tasks in TARGET_OPTIONS.items():
        value = dataset.get(key)
        if value is not None and task not in tasks:
            raise ConfigError(f"dataset.{key}={value} does not apply to dataset.task={task}: it is for "
                              f"{' and '.join(tasks)} targets; leave it null")


# Per-batch statistics run after every training step: for small models their few tensor operations
# are a measurable share of the step (benchmarks/README.md), so each one counts.
@functools.lru_cache(maxsize=64)
def count_tensor(examples: int, device: torch.device) -> torch.Tensor:
    """A float32 scalar holding `examples`, made once per batch size and device (no per-step fill or copy)."""
    return torch.full((), examples, dtype=torch.float32, device=device)


def as_float32(loss: torch.Tensor) -> torch.Tensor:
    """`loss` in float32 (autocast may give bf16/fp16), without a call when it already is."""
    return loss if loss.dtype == torch.float32 else loss.float()
