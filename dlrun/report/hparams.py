"""A run's hyperparameters as TensorBoard's HPARAMS plugin shows them: group choices and changed values.

The record goes into the run's own event file (experiment, session-start and session-end
summaries), not into a separate timestamped sub-run as `SummaryWriter.add_hparams` does, so
`tensorboard --logdir <sweep dir>` lists every job of a sweep under its own name.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summaries

HParam = str | int | float | bool


def group_choices() -> dict[str, str]:
    """The chosen option of each config group (`model: lenet`), in defaults-list order."""
    if not HydraConfig.initialized():
        return {}
    choices = HydraConfig.get().runtime.choices  # Hydra lists them last-composed first
    return {group: str(option) for group, option in reversed(choices.items())
            if not group.startswith("hydra/") and option is not None}


def overrides() -> list[str]:
    """The command-line overrides of this run (in a sweep: this job's values)."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def run_hparams(cfg: DictConfig) -> dict[str, HParam]:
    """Group choices plus the resolved value of every overridden key (swept or set by hand).

    Keys the run name ignores (`hydra.job.config.override_dirname.exclude_keys`: output_root,
    name, resume paths) are left out: they do not change the experiment.
    """
    params: dict[str, HParam] = dict(group_choices())
    if not HydraConfig.initialized():
        return params
    excluded = set(HydraConfig.get().job.config.override_dirname.exclude_keys)
    for override in OverridesParser.create().parse_overrides(overrides()):
        key = override.key_or_group
        if key in params or key in excluded or override.is_delete():
            continue  # a group choice is already listed under its group
        params[key] = _scalar(OmegaConf.select(cfg, key, default=override.value()))
    return params


def write_hparams(writer: SummaryWriter, params: dict[str, HParam], metric_names: Iterable[str]) -> None:
    """Write the HPARAMS record into `writer`'s own event file.

    The metric values are not in the record: TensorBoard reads each metric from the run's
    scalar of the same tag, so the caller logs those scalars (any step) before or after.
    """
    metrics = {name: 0.0 for name in metric_names}  # only the names go into the experiment summary
    experiment, session_start, session_end = hparams_summaries(params, metrics)
    file_writer = writer._get_file_writer()  # add_hparams would open a second writer in a sub-run
    for summary in (experiment, session_start, session_end):
        file_writer.add_summary(summary)
    writer.flush()


def _scalar(value: Any) -> HParam:
    """HPARAMS takes numbers, strings and booleans; anything else is shown as its JSON text."""
    if isinstance(value, (str, int, float, bool)):
        return value
    container = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return json.dumps(container)
