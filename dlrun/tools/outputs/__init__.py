"""What the tools write for each task (dlrun-eval's files, dlrun-predict's rows): the task → outputs table."""

from __future__ import annotations

from dlrun.data.card import DataCard
from dlrun.tools.outputs.base import OutputOptions, TaskOutputs
from dlrun.tools.outputs.binary import BinaryOutputs
from dlrun.tools.outputs.classification import ClassificationOutputs
from dlrun.tools.outputs.detection import DetectionOutputs
from dlrun.tools.outputs.language_model import LanguageModelOutputs
from dlrun.tools.outputs.multilabel import MultilabelOutputs
from dlrun.tools.outputs.regression import RegressionOutputs

OUTPUTS: dict[str, type[TaskOutputs]] = {"classification": ClassificationOutputs, "binary": BinaryOutputs,
                                         "multilabel": MultilabelOutputs, "regression": RegressionOutputs,
                                         "language_model": LanguageModelOutputs, "detection": DetectionOutputs}


def outputs_for(card: DataCard, options: OutputOptions = OutputOptions()) -> TaskOutputs:
    """The outputs of the run's task (the card says which), with `options`."""
    return OUTPUTS.get(card.task, TaskOutputs)(card, options)


__all__ = ["OUTPUTS", "OutputOptions", "TaskOutputs", "outputs_for"]
