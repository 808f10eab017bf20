"""The files Hydra writes for a job (the log, `.hydra/`), held back until dlrun accepts the attempt.

Hydra writes them into the job's directory before the job runs: into a run that a refused
command merely named (`hydra.run.dir=<a finished run>` with a typo), they would replace the
run's own. So dlrun's config turns Hydra's writing off (`hydra.output_subdir: null`), its log
handler is `HeldLog`, which keeps the records in memory, and once the attempt is known to write
a directory (a new one, or the run it continues, locked) `write_into` writes both there: the
.hydra/ files of this attempt, and the log so far, appended to the run's `dlrun.log`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dlrun.atomic import atomic_write

HYDRA_SUBDIR = ".hydra"
MAX_HELD = 100_000  # records kept before the attempt is accepted (a refused one exits within seconds)


class HeldLog(logging.FileHandler):
    """A FileHandler that opens its file only when told where (`open_in`): until then it holds the records.

    `filename` (from Hydra's job_logging config) gives the file's name; its folder is replaced by
    the run directory the attempt writes. Records held when the handler closes unopened are dropped:
    the console showed them, and the refused attempt's directory must stay as it was.
    """

    def __init__(self, filename: str, mode: str = "a", encoding: Optional[str] = "utf-8") -> None:
        super().__init__(filename, mode, encoding, delay=True)
        self.held: Optional[list[logging.LogRecord]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self.held is None:
            super().emit(record)
        elif len(self.held) < MAX_HELD:
            self.held.append(record)

    def opens_now(self) -> bool:
        """Whether the attempt being accepted is this handler's (a fused sweep holds one handler per job)."""
        return True

    def open_in(self, folder: Path) -> None:
        """Write to `<folder>/<file name>` (appending to what earlier attempts wrote), the held records first."""
        self.acquire()
        try:
            if self.held is None:
                return
            self.baseFilename = str((Path(folder) / Path(self.baseFilename).name).resolve())
            held, self.held = self.held, None
            for record in held:
                super().emit(record)
        finally:
            self.release()


def write_into(run_dir: Path, cfg: Optional[DictConfig]) -> None:
    """The attempt writes `run_dir`: its held log goes there, and (in a Hydra app) its .hydra/ files.

    `cfg` is the job's config as Hydra passed it (unresolved, as Hydra saves it); None: no .hydra/.
    """
    for handler in _held_logs():
        if handler.opens_now():
            handler.open_in(run_dir)
    if cfg is not None and HydraConfig.initialized():
        _write_hydra_files(Path(run_dir) / HYDRA_SUBDIR, cfg)


def _write_hydra_files(folder: Path, cfg: DictConfig) -> None:
    """What Hydra's run_job writes with `hydra.output_subdir=.hydra`: config, hydra and overrides YAML."""
    hydra_cfg = HydraConfig.instance().cfg  # {"hydra": ...} as Hydra saves it
    files = {"config.yaml": cfg, "hydra.yaml": hydra_cfg, "overrides.yaml": HydraConfig.get().overrides.task}
    for name, content in files.items():
        text = OmegaConf.to_yaml(content)
        atomic_write(folder / name, lambda temporary, text=text: temporary.write_text(text))


def _held_logs() -> list[HeldLog]:
    loggers = [logging.getLogger(), *(logger for logger in logging.Logger.manager.loggerDict.values()
                                      if isinstance(logger, logging.Logger))]
    return [handler for logger in loggers for handler in logger.handlers if isinstance(handler, HeldLog)]
