"""Loss, metrics and per-batch hooks for each kind of target a dataset declares (`dataset.task`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from omegaconf import DictConfig

from dlrun.tasks.base import Task
from dlrun.tasks.binary import Binary
from dlrun.tasks.classification import Classification
from dlrun.tasks.detection import Detection
from dlrun.tasks.language_model import LanguageModel
from dlrun.tasks.multilabel import Multilabel
from dlrun.tasks.regression import Regression

if TYPE_CHECKING:
    from dlrun.data.build import Data

TASKS: dict[str, type[Task]] = {"classification": Classification, "binary": Binary, "multilabel": Multilabel,
                                "regression": Regression, "language_model": LanguageModel, "detection": Detection}


def build_task(cfg: DictConfig, data: "Data") -> Task:
    """The task `dataset.task` names, configured from the run's config and data (the classes, the targets' scale,
    a vocabulary)."""
    return TASKS[data.task].from_config(cfg, data)


__all__ = ["TASKS", "Task", "Classification", "Binary", "Multilabel", "Regression", "LanguageModel", "Detection",
           "build_task"]
