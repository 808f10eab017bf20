"""The jobs of a fused group as Hydra jobs: each its own job directory, `.hydra/` files, log file and JobReturn.

Hydra's `run_job` (hydra/core/utils.py) does this for each job the basic launcher runs: it sets the
job's output directory (`hydra.sweep.dir/hydra.sweep.subdir`), makes it, routes the log to the
job's `dlrun.log` and holds the job's config in `HydraConfig` while the task runs (dlrun's config
has Hydra write no `.hydra/` files: the job's attempt writes them, and its held log, once accepted;
dlrun.run.job_files). A fused group runs many jobs in one task, so `MemberJob` does the same for
each member, and `MemberLogs` gives each member a held log file of its own: a record logged while a
member is `current()` (or with `extra={"member": number}`) goes to that member's file, the group's
own records to every member's file. The console shows the group's
records, and a member's records from warnings up (or with `extra={"console": True}`): sixteen
members' epoch lines are in their files, not on the screen.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from dlrun.run.job_files import HeldLog

_current_member: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar("fused_member", default=None)
_ended_members: set[int] = set()  # members whose attempt has ended: the group's later records are not theirs


@dataclass
class MemberJob:
    """One job of the sweep: its number, overrides, full config (with `hydra`), task config and directory."""

    number: int
    overrides: list[str]
    config: DictConfig  # as Hydra's run_job holds it: the job's config with its `hydra` node
    task_cfg: DictConfig  # what the task function gets: the config without `hydra`
    hydra_cfg: DictConfig  # `{"hydra": ...}` as HydraConfig holds it (a copy): .hydra/hydra.yaml
    hydra_view: DictConfig  # what HydraConfig holds while this job is current
    run_dir: Path
    cfg: Optional[DictConfig] = None  # the validated task config, once the launcher has validated it

    @classmethod
    def compose(cls, hydra_context: HydraContext, sweep_config: DictConfig, overrides: Sequence[str],
                number: int) -> "MemberJob":
        """The job's config as the basic launcher composes it, with its output directory set as run_job sets it."""
        config = hydra_context.config_loader.load_sweep_config(sweep_config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = number
            config.hydra.job.num = number
        HydraConfig.instance().set_config(config)  # the job's subdir reads hydra.job.*
        output_dir = os.path.join(str(OmegaConf.select(config, "hydra.sweep.dir")),
                                  str(OmegaConf.select(config, "hydra.sweep.subdir")))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(config)
        task_cfg = copy.deepcopy(config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        view = HydraConfig.instance().cfg
        return cls(number, list(overrides), config, task_cfg, copy.deepcopy(view), view,
                   Path(config.hydra.runtime.output_dir))

    def make_dir(self) -> None:
        """The job's empty directory, as run_job makes it; its .hydra/ files and log are written by its
        attempt once accepted (dlrun.run.admission)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def current(self) -> Iterator[None]:
        """While inside, HydraConfig holds this job's config and log records go to this job's log file."""
        HydraConfig.instance().cfg = self.hydra_view  # what set_config(self.config) makes, made once
        token = _current_member.set(self.number)
        try:
            yield
        finally:
            _current_member.reset(token)

    def job_return(self, value: float) -> JobReturn:
        """What the launcher returns for this job: dlrun's task returns the best validation value (NaN if none)."""
        result = JobReturn(overrides=list(self.overrides), cfg=self.task_cfg, hydra_cfg=self.hydra_cfg,
                           working_dir=os.getcwd(), task_name=str(self.config.hydra.job.name),
                           status=JobStatus.COMPLETED)
        result.return_value = value
        return result


def log_ended(number: int) -> None:
    """Job `number`'s attempt has ended: its log file takes no more of the group's records."""
    _ended_members.add(number)


class _MemberFilter(logging.Filter):
    """A member's log file: the group's records and this member's own."""

    def __init__(self, number: int) -> None:
        super().__init__()
        self.number = number

    def filter(self, record: logging.LogRecord) -> bool:
        member = getattr(record, "member", _current_member.get())
        return member == self.number or (member is None and self.number not in _ended_members)


class _ConsoleFilter(logging.Filter):
    """The console: the group's records; a member's own when they are warnings or ask for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "console"):
            return bool(record.console)
        return getattr(record, "member", _current_member.get()) is None or record.levelno >= logging.WARNING


class MemberLogs:
    """Hydra's job logging for a group: the console as configured, and each member's log file of its own."""

    def __init__(self, jobs: Sequence[MemberJob]) -> None:
        self.jobs = jobs
        self.handlers: list[logging.Handler] = []
        self.console_filter = _ConsoleFilter()

    def __enter__(self) -> "MemberLogs":
        first = self.jobs[0].config.hydra
        if first.job_logging is None:
            return self
        settings = OmegaConf.to_container(first.job_logging, resolve=True)
        files = [name for name, spec in settings.get("handlers", {}).items()
                 if str(spec.get("class", "")).endswith(("FileHandler", "HeldLog"))]
        for name in files:  # every member gets these below, each with its own file name
            del settings["handlers"][name]
        for logger in [settings.get("root") or {}, *settings.get("loggers", {}).values()]:
            logger["handlers"] = [handler for handler in logger.get("handlers", []) if handler not in files]
        configure_log(OmegaConf.create(settings), first.verbose)
        root = logging.getLogger()
        for handler in root.handlers:
            handler.addFilter(self.console_filter)
        for job in self.jobs:
            own = OmegaConf.to_container(job.config.hydra.job_logging, resolve=True)
            for name in files:
                self.handlers.append(_file_handler(own, name, job.number))
        for handler in self.handlers:
            root.addHandler(handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ended_members.clear()
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()
        for handler in root.handlers:
            handler.removeFilter(self.console_filter)


class _MemberLog(HeldLog):
    """A member's log file: held until its attempt is accepted, then written in its run directory."""

    def __init__(self, filename: str, number: int, mode: str = "a", encoding: Optional[str] = "utf-8") -> None:
        super().__init__(filename, mode, encoding)
        self.number = number

    def opens_now(self) -> bool:
        return _current_member.get() == self.number


def _file_handler(settings: dict[str, Any], name: str, number: int) -> logging.Handler:
    """Member `number`'s instance of the file handler `name` of Hydra's job logging settings."""
    spec = settings["handlers"][name]
    handler = _MemberLog(spec["filename"], number, mode=spec.get("mode", "a"), encoding=spec.get("encoding", "utf-8"))
    formatter = settings.get("formatters", {}).get(spec.get("formatter"), {})
    handler.setFormatter(logging.Formatter(formatter.get("format"), formatter.get("datefmt")))
    handler.setLevel(spec.get("level", logging.NOTSET))
    handler.addFilter(_MemberFilter(number))
    return handler
