"""Before training: the model takes the dataset's inputs and gives the outputs the task reads.

A model that cannot take the input shape, or whose head does not fit the target (10 outputs for a
yes/no label, 1 for 143 classes), would otherwise fail inside the first step with a shape error
that names neither key. One forward pass of one example, in eval mode (no dropout, no batch
statistics updated, no random numbers drawn), finds both and says which config keys to change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.errors import ConfigError
from dlrun.tasks.base import Task

if TYPE_CHECKING:
    from dlrun.data.build import Data


def check_model_fits(model: nn.Module, data: "Data", task: Task, cfg: DictConfig) -> None:
    """ConfigError (one line naming the keys) unless `model` maps an example of `data` to `task.expected_outputs`."""
    expected = task.expected_outputs
    if expected is None:  # detectors and language models have outputs of their own form
        return
    example = data.example_input()
    name = type(model).__name__
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            outputs = model(example)
    except Exception as error:  # any failure of the forward pass is the shape's: one line, the keys behind it
        reason = (str(error).strip().splitlines() or [""])[0]
        raise ConfigError(f"the model ({name}) cannot take this dataset's inputs of shape {list(example.shape[1:])} "
                          f"(dataset.input_shape={list(cfg.dataset.input_shape)}): {type(error).__name__}: {reason}; "
                          "choose a model for this input (model=mlp takes any shape)") from None
    finally:
        model.train(was_training)
    got = outputs.reshape(len(outputs), -1).shape[1] if isinstance(outputs, torch.Tensor) else None
    if got != expected:
        gives = f"{got} output{'s' if got != 1 else ''} per example" if got is not None else type(outputs).__name__
        raise ConfigError(f"dataset.task={cfg.dataset.task} needs {expected} output{'s' if expected != 1 else ''} "
                          f"({task.head}) but the model ({name}) gives {gives}: set dataset.num_outputs={expected} "
                          "(model.num_outputs follows it)")
