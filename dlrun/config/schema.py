"""The typed configuration: fixed sections as dataclasses, and what group options may hold.

Fixed sections (trainer, regularization, device, debug, sweep) are dataclasses that OmegaConf
merges the composed config onto. Groups whose fields depend on the chosen option (model,
dataset, optimizer, scheduler) are checked against the signature of their `_target_`
(dlrun.config.checks); `META_KEYS` are the keys dlrun reads itself. The choice lists below are
the valid values of the keys that take one of a few names.

Nothing here imports torch: a config is checked before any compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class TrainerConfig:
    epochs: int = 20
    batch_size: int = 64
    limit_batches: Optional[int] = None
    resume: Optional[str] = None  # auto | a run directory (continued in place) | a checkpoint file (a new run)
    kfold: Optional[int] = None  # K-fold cross-validation: K runs, val = one fold each
    # After the K folds, one more run on every training row for the folds' mean best epoch count (<run>/refit).
    kfold_refit: bool = False
    # last.pt inside epochs too: every N optimizer steps and/or every M minutes (null = off).
    save_every_steps: Optional[int] = None
    save_every_minutes: Optional[float] = 10.0
    # Per-layer gradient norms to TensorBoard (grad_norm/...), summed on the device, read once per epoch.
    log_grad_norms: bool = False


@dataclass
class RegularizationConfig:
    weight_decay: float = 0.0
    # False (d2l's and most references' choice): biases and norm-layer weights get no decay.
    decay_bias_and_norm: bool = False
    # Strength of an L1 penalty λ·Σ|w| added to the loss (same parameters as weight decay).
    l1: float = 0.0
    dropout: float = 0.0
    # Cross-entropy label smoothing (classification tasks only).
    label_smoothing: float = 0.0
    # Batch-wise training-set augmentation on the device: one of data.augment.AUGMENTS.
    augment: str = "none"
    # Area range (fractions of the image) of augment=imagenet's random resized crop.
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # Max gradient norm; 0 turns clipping off, null uses the task's default (language models: 1).
    grad_clip: Optional[float] = None
    # Stop after this many epochs without a better validation metric; 0 = never.
    early_stopping: int = 0


@dataclass
class DeviceConfig:
    type: str = "auto"
    amp: str = "off"
    channels_last: Any = "auto"  # auto | true | false (dlrun.device.wants_channels_last)
    compile: Any = "auto"  # auto | true | false (a bool from the command line, or "auto")
    compile_mode: str = "default"
    cudnn_benchmark: bool = True
    deterministic: bool = False
    # auto: the cores free for this run (dlrun.machine.choose_threads) | an integer | null: PyTorch's default
    num_threads: Any = "auto"
    # Several processes (torchrun, a multi-task Slurm job): BatchNorm over the global batch (CUDA only),
    # and how long a process waits for the others at an exchange before the run fails.
    sync_batchnorm: bool = False
    dist_timeout_min: float = 30.0
    # In-memory image splits held as floats at the model's input size when they fit (MiB; 0 = never).
    float_cache_mb: float = 1024.0
    host_allocator: str = "tuned"  # tuned | system (dlrun.host_memory)


@dataclass
class DebugConfig:
    max_epochs: Optional[int] = None
    limit_batches: Optional[int] = None
    subset: Optional[int] = None


@dataclass
class SweepConfig:
    resume: Optional[str] = None


@dataclass
class Config:
    seed: int = 0
    name: Optional[str] = None
    output_root: str = "outputs"
    model: Any = field(default_factory=dict)
    dataset: Any = field(default_factory=dict)
    optimizer: Any = field(default_factory=dict)
    scheduler: Any = field(default_factory=dict)
    regularization: RegularizationConfig = field(default_factory=RegularizationConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)


# Keys a group option may carry besides its target's arguments: dlrun reads them itself.
META_KEYS: dict[str, set[str]] = {
    # for_task: the one task a model is made for (detection); init, init_param: dlrun.models.init;
    # weights: a file of weights loaded after init
    "model": {"input_size", "init", "init_param", "for_task", "weights"},
    # The target's options (dlrun.tasks) sit next to dataset.task: what the loss and metrics make of the targets.
    "dataset": {"task", "num_outputs", "input_shape", "resize", "val_fraction", "subset", "log_target",
                "standardize_targets", "loss", "pos_weight", "threshold"},
    "optimizer": set(),
    "scheduler": {"interval", "monitor"},
}
# Arguments dlrun supplies when it builds the object, so the YAML must not set them.
RUNTIME_ARGS: dict[str, set[str]] = {
    "model": set(),
    "dataset": set(),
    "optimizer": {"params", "weight_decay"},
    "scheduler": {"optimizer"},
}
RUNTIME_HINTS = {
    "optimizer.weight_decay": "set weight decay with regularization.weight_decay",
}
DEVICE_TYPES = ("auto", "cpu", "cuda")
AMP_MODES = ("off", "bf16", "fp16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
HOST_ALLOCATORS = ("tuned", "system")  # dlrun.engine.host_memory
# regularization.augment: the policies of dlrun.data.augment.AUGMENTS (a test keeps the two equal).
AUGMENT_CHOICES = ("none", "flip", "flip_crop", "flip_crop_jitter", "imagenet")
# dataset.task: the tasks of dlrun.tasks.TASKS (a test keeps the two equal).
TASK_KINDS = ("classification", "binary", "multilabel", "regression", "language_model", "detection")
# Tasks whose datasets need a model made for them (one whose YAML says `for_task: <task>`).
DEDICATED_TASKS = ("detection",)
SCHEDULER_INTERVALS = ("epoch", "step")  # scheduler.interval: once per epoch or once per batch

