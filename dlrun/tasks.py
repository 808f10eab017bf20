"""Loss and metrics for each kind of task a dataset declares (`dataset.task`).

Per batch a task returns a small tensor of sums that stays on the device; the loop adds
them up and reads them once per epoch, so no step waits for the host. Tasks that need more
than a forward pass per batch (a language model's hidden state, its text samples, a detector's
targets, mAP and pictures) do it through the hooks `start_pass`, `forward`, `carried_state`,
`epoch_texts` and `epoch_images`, so the loop stays the same for every task; `speed_metrics` adds
a task's own unit of speed (tokens/s) and `after_test` its own final evaluation (multi-step
forecasts and their figure).
`report` names what dlrun-eval writes for the task and what a dlrun-predict row holds.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from dlrun.errors import ConfigError
from dlrun.forecast import Series, evaluate_forecasts

if TYPE_CHECKING:
    from dlrun.data import Data
    from dlrun.data.card import DataCard
    from dlrun.reports import Report, ReportOptions


class Task:
    """How a batch goes through the model; subclasses say how it is scored."""

    metric: str  # the validation metric that picks the best checkpoint
    mode: str  # "max" or "min": which direction of `metric` is better
    default_grad_clip: Optional[float] = None  # used when regularization.grad_clip is null

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

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        """What dlrun-eval writes besides the metrics, and what a dlrun-predict row holds (dlrun.reports)."""
        from dlrun.reports import Report

        return Report(card, options)

    def speed_metrics(self, examples_per_sec: float) -> dict[str, float]:
        """Training speed in the task's own units, logged every epoch next to examples_per_sec."""
        return {}

    def after_test(self, model: torch.nn.Module, run_dir: Path) -> dict[str, float]:
        """Extra evaluation after the test pass, on the same (best) weights: metrics named
        `<group>/<name>`, reported with the test metrics; it may write files (figures) into `run_dir`."""
        return {}


class Classification(Task):
    """Cross-entropy on logits; accuracy. The best checkpoint has the highest val/acc."""

    metric, mode = "acc", "max"

    def __init__(self, label_smoothing: float = 0.0) -> None:
        # regularization.label_smoothing; reported losses (val and test too) include it.
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Classification":
        return cls(label_smoothing=cfg.regularization.label_smoothing)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs, targets, label_smoothing=self.label_smoothing)

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, correct predictions, examples]."""
        correct = (outputs.argmax(dim=-1) == targets).sum(dtype=torch.float32)
        return torch.stack([_as_float32(loss) * len(targets), correct, _count(len(targets), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, correct, count = stats
        return {"loss": loss_sum / count, "acc": correct / count}

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import ClassificationReport

        return ClassificationReport(card, options)


class Regression(Task):
    """Mean squared error; RMSE. The best checkpoint has the lowest val/rmse.

    With `log_target` (dataset.log_target=true, for positive targets such as prices) it also
    reports d2l's log-RMSE, sqrt(mean((log max(prediction, 1) - log target)²)), and picks the
    best checkpoint by it: errors count relative to the target's size.

    When the examples are windows of one series (the dataset's extras say so, e.g. `sine`),
    `after_test` also forecasts k steps ahead from the model's own predictions (d2l 8.1) and
    reports `forecast/mse_<k>` with a figure, `forecasts.png` (see dlrun.forecast).
    """

    mode = "min"

    def __init__(self, log_target: bool = False, series: Optional[Series] = None) -> None:
        self.log_target = log_target
        self.metric = "log_rmse" if log_target else "rmse"
        self.series = series

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Regression":
        return cls(log_target=bool(cfg.dataset.get("log_target", False)), series=Series.from_extras(data.extras))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs, targets.reshape(outputs.shape))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x examples, squared log errors (0 without log_target), examples]."""
        log_errors = _count(0, outputs.device)
        if self.log_target:
            predictions = outputs.float().reshape(targets.shape).clamp(min=1)
            log_errors = (predictions.log() - targets.float().log()).square().sum()
        return torch.stack([_as_float32(loss) * len(targets), log_errors.float(), _count(len(targets), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, log_errors, count = stats
        mse = loss_sum / count
        result = {"loss": mse, "rmse": math.sqrt(mse) if mse >= 0 else float("nan")}
        if self.log_target:
            result["log_rmse"] = math.sqrt(log_errors / count) if log_errors >= 0 else float("nan")
        return result

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import RegressionReport

        return RegressionReport(card, options)

    def after_test(self, model: torch.nn.Module, run_dir: Path) -> dict[str, float]:
        if self.series is None:
            return {}
        return evaluate_forecasts(model, self.series, run_dir)


class LanguageModel(Task):
    """Next-token cross-entropy over every position; perplexity (exp of the mean loss), lower is better.

    The model is called as `model(ids, state=..., return_state=True)` → (logits (B, T, V), state).
    With sequential sampling the state is carried from batch to batch, detached so gradients
    stop at the batch boundary (truncated backpropagation through time); with random sampling
    every batch starts from a fresh state. Every pass starts fresh. Gradients are clipped to
    norm 1 unless regularization.grad_clip says otherwise (d2l 8.5). Speed is also reported in
    d2l's unit, tokens/s: every example is a window of `tokens_per_example` predicted tokens.
    """

    metric, mode = "ppl", "min"
    default_grad_clip = 1.0

    def __init__(self, tokens: list[str], separator: str, sample_prefix: list[int], carry_state: bool,
                 sample_length: int = 50, tokens_per_example: int = 1) -> None:
        self.tokens = tokens
        self.separator = separator
        self.sample_prefix = sample_prefix or [1 if len(tokens) > 1 else 0]  # else: the most frequent token
        self.carry_state = carry_state
        self.sample_length = sample_length
        self.tokens_per_example = tokens_per_example
        self.state: Any = None

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "LanguageModel":
        extras = data.extras
        # input_shape is [num_steps]: the window length, every position of which is predicted
        return cls(extras["tokens"], extras["separator"], extras["sample_prefix"], carry_state=data.sequential,
                   tokens_per_example=int(cfg.dataset.input_shape[0]))

    def start_pass(self, training: bool) -> None:
        self.state = None

    def carried_state(self) -> Any:
        return self.state

    def restore_carried_state(self, state: Any) -> None:
        self.state = state

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor,
                targets: Optional[torch.Tensor] = None) -> torch.Tensor:
        outputs, state = model(inputs, state=self.state, return_state=True)
        self.state = _detached(state) if self.carry_state else None
        return outputs

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1))

    def batch_stats(self, outputs: torch.Tensor, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x tokens, tokens]."""
        return torch.stack([_as_float32(loss) * targets.numel(), _count(targets.numel(), outputs.device)])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, count = stats
        loss = loss_sum / count
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0))}  # exp overflows a float past ~709

    def epoch_texts(self, model: torch.nn.Module) -> dict[str, str]:
        return {"sample": self.generate(model)}

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.reports import LanguageModelReport

        return LanguageModelReport(card, options)

    def speed_metrics(self, examples_per_sec: float) -> dict[str, float]:
        return {"tokens_per_sec": examples_per_sec * self.tokens_per_example}

    @torch.no_grad()
    def generate(self, model: torch.nn.Module) -> str:
        """The prefix and `sample_length` tokens continued greedily (d2l's predict_ch8)."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        ids = list(self.sample_prefix)
        outputs, state = model(torch.tensor([ids], device=device), state=None, return_state=True)
        for _ in range(self.sample_length):
            ids.append(int(outputs[0, -1].argmax()))
            outputs, state = model(torch.tensor([ids[-1:]], device=device), state=state, return_state=True)
        model.train(was_training)
        return self.separator.join(self.tokens[i] for i in ids)


class Detection(Task):
    """Object detection (dlrun.detection). The best checkpoint has the highest val/map50.

    Targets are (B, M, 5) rows [class, x1, y1, x2, y2]: corners in fractions of the image, class
    -1 for padding. With an anchor model (tiny_ssd) the task matches anchors to objects by IoU;
    the loss is cross-entropy over the anchors' classes plus smooth-L1 over the matched anchors'
    box offsets, and d2l's `class_error` and `bbox_mae` (over anchors) come with it. A complete
    detector (torchvision's) returns its own loss terms when training and no loss when
    evaluating. Evaluation passes decode the detections (NMS) and report mAP@0.5 (`map50`) and
    mAP@[.5:.95] (`map`); `per_class_ap()` then gives each class's AP. After every training
    epoch a few validation images are drawn with their true and predicted boxes.

    dlrun.detection is imported inside the methods: torchvision and torchmetrics take seconds
    to import, and `dlrun --help` reaches this module.
    """

    metric, mode = "map50", "max"
    sample_images = 4  # validation images drawn every epoch

    def __init__(self, classes: list[str], samples: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        self.classes = classes
        self.samples = samples  # (images, targets) drawn with the model's boxes after every epoch
        self.evaluation: Any = None  # an evaluation pass's DetectionMetric; None while training
        self.anchor_model: Optional[torch.nn.Module] = None  # the batch's model when it is an anchor model
        self.matched: tuple[torch.Tensor, ...] = ()  # the batch's anchor labels, offsets and mask
        self.image_size = (1, 1)

    @classmethod
    def from_config(cls, cfg: DictConfig, data: "Data") -> "Detection":
        if len(data.val) == 0:
            raise ConfigError("task=detection picks the best epoch by val/map50 and needs a validation split: "
                              "set dataset.val_fraction > 0")
        images, targets = next(iter(data.val))  # evaluation batches: nothing random is drawn
        return cls(list(data.extras["classes"]), (images[:cls.sample_images], targets[:cls.sample_images]))

    def start_pass(self, training: bool) -> None:
        from dlrun.detection.metrics import DetectionMetric

        self.evaluation = None if training else DetectionMetric(self.classes)

    def forward(self, model: torch.nn.Module, inputs: torch.Tensor, targets: Optional[torch.Tensor] = None) -> Any:
        from dlrun.detection import computes_own_loss

        self.image_size = tuple(inputs.shape[-2:])
        if computes_own_loss(model):
            self.anchor_model = None
            return model(inputs, targets) if model.training else model(inputs)
        self.anchor_model = model
        return model(inputs)

    def loss(self, outputs: Any, targets: torch.Tensor) -> torch.Tensor:
        from dlrun.detection.boxes import multibox_loss, multibox_target

        if self.anchor_model is None:  # a complete detector: its loss terms, or (evaluating) its detections
            return outputs.sum() if isinstance(outputs, torch.Tensor) else targets.new_zeros((), dtype=torch.float32)
        self.matched = multibox_target(self.anchor_model.anchors, targets.float(), self.anchor_model.match_iou)
        return multibox_loss(outputs, *self.matched)

    def batch_stats(self, outputs: Any, targets: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """[loss x images, images with a loss, correct anchors, anchors, |offset error|, offset values].

        On evaluation passes the batch's detections also go into the mAP computation.
        """
        from dlrun.detection import decode
        from dlrun.detection.boxes import anchor_errors

        count = targets.new_full((), len(targets), dtype=torch.float32)  # a fill, not a host-to-device copy
        if self.anchor_model is not None:
            scored, errors = count, anchor_errors(outputs, *self.matched)
            detections = decode(self.anchor_model, outputs) if self.evaluation is not None else None
        else:
            scored = count if isinstance(outputs, torch.Tensor) else count * 0
            errors, detections = count.new_zeros(4), outputs
        if self.evaluation is not None:
            self.evaluation.update(detections, targets, self.image_size)
        return torch.cat([torch.stack([loss.float() * scored, scored]), errors])

    def metrics(self, stats: list[float]) -> dict[str, float]:
        loss_sum, scored, correct, anchors, absolute, values = stats
        result = {"loss": loss_sum / scored} if scored else {}
        if anchors:
            result.update(class_error=1 - correct / anchors, bbox_mae=absolute / values)
        if self.evaluation is not None:
            result.update(self.evaluation.compute())
        return result

    @classmethod
    def report(cls, card: "DataCard", options: "ReportOptions") -> "Report":
        from dlrun.detection.report import DetectionReport

        return DetectionReport(card, options)

    def per_class_ap(self) -> dict[str, dict[str, float]]:
        """Each class's AP ({"ap50", "ap"}) on the last evaluation pass."""
        if self.evaluation is None:
            raise RuntimeError("per_class_ap() reads an evaluation pass; run one first (train.evaluate)")
        return self.evaluation.per_class()

    def epoch_images(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        from dlrun.detection import detect
        from dlrun.detection.draw import boxes_grid

        if self.samples is None:
            return {}
        images, targets = self.samples
        return {"val/boxes": boxes_grid(images, detect(model, images), self.classes, targets)}


def _detached(state: Any) -> Any:
    """The state with every tensor cut from the graph (an LSTM's is a tuple (h, c))."""
    if isinstance(state, torch.Tensor):
        return state.detach()
    if isinstance(state, (tuple, list)):
        return type(state)(_detached(part) for part in state)
    return state


TASKS: dict[str, type[Task]] = {"classification": Classification, "regression": Regression,
                                "language_model": LanguageModel, "detection": Detection}


def build_task(cfg: DictConfig, data: "Data") -> Task:
    """The task `dataset.task` names, configured from the run's config and data (log_target, a vocabulary)."""
    return TASKS[data.task].from_config(cfg, data)


# Per-batch statistics run after every training step: for small models their few tensor operations
# are a measurable share of the step (benchmarks/README.md), so each one counts.
@functools.lru_cache(maxsize=64)
def _count(examples: int, device: torch.device) -> torch.Tensor:
    """A float32 scalar holding `examples`, made once per batch size and device (no per-step fill or copy)."""
    return torch.full((), examples, dtype=torch.float32, device=device)


def _as_float32(loss: torch.Tensor) -> torch.Tensor:
    """`loss` in float32 (autocast may give bf16/fp16), without a call when it already is."""
    return loss if loss.dtype == torch.float32 else loss.float()
