"""`hydra/launcher=fused`: a Hydra launcher plugin, shipped with dlrun, that trains the jobs of a sweep that
share one network as one stacked model (dlrun.run.fused_sweep).

Hydra instantiates launchers only from the `hydra_plugins` namespace package, which its plugin scan
imports at every start: this module stays light (no torch), and dlrun's machinery is imported when
a sweep is launched. (No `from __future__ import annotations`: the scan runs this module before it
is in sys.modules, where dataclasses looks string annotations up.)
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class FusedLauncherConf:
    _target_: str = "hydra_plugins.dlrun_fused_launcher.fused_launcher.FusedLauncher"
    # Members per stacked model; null: as many as fit in half the device's free memory.
    max_members: Optional[int] = None


ConfigStore.instance().store(group="hydra/launcher", name="fused", node=FusedLauncherConf, provider="dlrun")


class FusedLauncher(Launcher):
    """Groups the sweep's jobs by the network they train and runs each group as one stacked model."""

    def __init__(self, max_members: Optional[int] = None) -> None:
        self.max_members = max_members
        self.config: Optional[DictConfig] = None
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from dlrun.garbage_collector import import_quickly

        # torch and dlrun load here, not at Hydra's plugin scan; Dynamo too, which each member's torch.optim imports
        import_quickly("torch._dynamo", "dlrun.run.fused_sweep")
        from dlrun.run.fused_sweep import FusedSweep

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        sweep = FusedSweep(self.config, self.hydra_context, self.task_function, self.max_members)
        return sweep.launch(job_overrides, initial_job_idx)
