"""data.json: the data as a run's model sees it, written at training time and read by everything that uses the run.

Evaluation, prediction and export (dlrun.evaluate, dlrun.predict, dlrun.export) need to know,
without the training data at hand, what an input is and what an output means: the task, the
input kind and shape, the class names, the tabular preprocessing fitted on the training file,
a language model's vocabulary. Training writes them here, next to `.hydra/config.yaml` and the
checkpoints; new inputs are then prepared exactly as the training inputs were.

Input kinds (`inputs`):
- `image`: (C, H, W) floats in [0, 1]: an image file is decoded at H x W with C channels
  (dlrun.data.images.decode) and its uint8 pixels divided by 255, as every dataset's are.
- `table`: a vector of features made from named CSV columns by `encoder` (a
  `dlrun.data.tabular.TableEncoder` state; an identity encoder when the features are numbers already).
- `tokens`: (T,) ids of `vocabulary["tokens"]` (a language model).
- `sequence`: anything else ((T, F) sequences); evaluated, but not read from files.

Targets: `classes` names the outputs of a classifier (and a binary task's negative and positive
class, a multilabel task's labels); `target_names` the target columns a prediction is written
under; `target_scale` the regression targets' mean and std (dlrun.data.targets.TargetScale), by
which standardised outputs go back to the target's units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from omegaconf import DictConfig, OmegaConf

from dlrun.atomic import read_json, write_json
from dlrun.data.tabular import TableEncoder
from dlrun.data.targets import TargetScale
from dlrun.errors import ConfigError, DataError

CARD_FILE = "data.json"
INPUT_KINDS = ("image", "table", "tokens", "sequence")
NAMED_OUTPUTS = ("classification", "binary", "multilabel", "detection")  # tasks whose outputs have class names


@dataclass(frozen=True)
class DataCard:
    task: str  # dataset.task: classification | binary | multilabel | regression | language_model | detection
    inputs: str  # one of INPUT_KINDS
    input_shape: list[int]  # one example, as the model takes it (no batch dimension)
    # class names in output order (classification, detection); binary: [negative, positive]; multilabel: labels
    classes: list[str] = field(default_factory=list)
    encoder: Optional[dict[str, Any]] = None  # TableEncoder state (table inputs)
    target: Union[str, list[str], None] = None  # dataset.target: the target column(s) of a CSV dataset
    log_target: bool = False  # regression scored by log-RMSE; the model still predicts the target's own units
    vocabulary: Optional[dict[str, Any]] = None  # {"tokens", "separator": "" | " ", "sample_prefix"} (token inputs)
    dataset: str = ""  # the dataset's _target_, for messages
    target_names: list[str] = field(default_factory=list)  # the target columns, as the training file names them
    target_scale: Optional[dict[str, Any]] = None  # regression: TargetScale state (mean, std, standardized)
    threshold: float = 0.5  # binary, multilabel: yes at this probability or more

    @classmethod
    def from_data(cls, cfg: DictConfig, task: str, extras: dict[str, Any]) -> "DataCard":
        """The card of a run of `cfg` whose dataset returned `extras` (class names, an encoder, a vocabulary)."""
        dataset = cfg.dataset
        shape = [int(size) for size in dataset.input_shape]
        classes = [str(name) for name in extras.get("classes") or []]
        if task in ("classification", "multilabel") and not classes:
            classes = [str(index) for index in range(int(dataset.num_outputs))]
        if task == "binary" and not classes:
            classes = ["0", "1"]
        inputs, encoder, vocabulary = _input_kind(task, shape, extras)
        target = dataset.get("target")
        target = OmegaConf.to_container(target) if OmegaConf.is_list(target) else target
        names = [str(name) for name in extras.get("target_names") or ([target] if isinstance(target, str) else [])]
        return cls(task=task, inputs=inputs, input_shape=shape, classes=classes if task in NAMED_OUTPUTS else [],
                   encoder=encoder, target=target, log_target=bool(dataset.get("log_target", False)),
                   vocabulary=vocabulary, dataset=str(dataset.get("_target_", "")), target_names=names,
                   target_scale=extras.get("target_scale"), threshold=yes_threshold(dataset))

    def write(self, run_dir: Path) -> None:
        write_json(Path(run_dir) / CARD_FILE, asdict(self))

    @classmethod
    def read(cls, run_dir: Path) -> "DataCard":
        path = Path(run_dir) / CARD_FILE
        try:
            return cls(**read_json(path))
        except (OSError, ValueError, TypeError) as error:
            raise DataError(f"cannot read {path} ({type(error).__name__}: {error})") from None

    def scale(self) -> TargetScale:
        """The regression targets' scale (identity for a run from before targets were standardised)."""
        return TargetScale.from_state(self.target_scale) or TargetScale.identity(max(1, len(self.target_names)))

    def prediction_names(self) -> list[str]:
        """The columns a prediction is written under: the target's name(s) (one per regression target), else
        `prediction`."""
        if self.task == "regression" and len(self.target_names) > 1:
            return list(self.target_names)
        return [self.target_names[0]] if len(self.target_names) == 1 else ["prediction"]

    def table_encoder(self) -> TableEncoder:
        if self.encoder is None:
            raise DataError(f"this model takes {self.inputs} inputs, not CSV rows")
        return TableEncoder.from_state(self.encoder)

    def describe_inputs(self) -> str:
        """How an input is prepared, in words (the export's JSON)."""
        if self.inputs == "image":
            channels, height, width = self.input_shape
            colour = "grey (1 channel)" if channels == 1 else f"RGB ({channels} channels)"
            return (f"float32 (N, {channels}, {height}, {width}): the image decoded as {colour}, resized to "
                    f"{height}x{width} (bilinear, whole image), pixel values / 255 in [0, 1]")
        if self.inputs == "table":
            return (f"float32 (N, {self.input_shape[0]}): the encoder's columns, numbers standardized with its "
                    "mean and std (missing → 0), categories one-hot (missing or unseen → <missing>)")
        if self.inputs == "tokens":
            return f"int64 (N, T): ids of the vocabulary's tokens (0: <unk>); trained with T = {self.input_shape[0]}"
        return f"float32 (N, {', '.join(map(str, self.input_shape))})"


def yes_threshold(dataset: DictConfig) -> float:
    """dataset.threshold (binary, multilabel: yes at this probability or more); 0.5 when absent or null."""
    value = dataset.get("threshold")
    try:
        return 0.5 if value is None else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"dataset.threshold={value!r} is not a number: a probability in (0, 1), e.g. 0.5") from None


def write_card(run_dir: Path, cfg: DictConfig, task: str, extras: dict[str, Any]) -> None:
    """Training's call: data.json in the run directory (rewritten by every attempt, with the same content)."""
    DataCard.from_data(cfg, task, extras).write(run_dir)


def _input_kind(task: str, shape: list[int],
                extras: dict[str, Any]) -> tuple[str, Optional[dict[str, Any]], Optional[dict[str, Any]]]:
    """(inputs, encoder state, vocabulary) from what the dataset returned."""
    if task == "language_model":
        tokens, separator = list(extras["tokens"]), extras["separator"]
        prefix = separator.join(tokens[i] for i in extras.get("sample_prefix", []))
        return "tokens", None, {"tokens": tokens, "separator": separator, "sample_prefix": prefix}
    if "encoder" in extras:
        return "table", extras["encoder"], None
    if len(shape) == 1:  # numbers already (diabetes, synthetic data): CSV columns named as the dataset names them
        names = list(extras.get("feature_names") or [f"x{i + 1}" for i in range(shape[0])])
        return "table", TableEncoder.identity(names).state_dict(), None
    if len(shape) == 3:
        return "image", None, None
    return "sequence", None, None
