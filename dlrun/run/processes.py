"""The processes of one run: who is who, joining them in a process group, and keeping the others quiet.

torchrun (or `python -m torch.distributed.run`) puts RANK, WORLD_SIZE, LOCAL_RANK and
LOCAL_WORLD_SIZE in each process's environment. In a submitit job with several tasks
(`hydra/launcher=submitit_slurm` with `nodes` and `tasks_per_node`, or `submitit_local` with
`tasks_per_node`) submitit's job environment gives them, and MASTER_ADDR/MASTER_PORT (the first
node, a port drawn from the job id). Without either a run is one process: `join` returns `Ranks()`.

The first `join` of a process with several ranks starts the process group (NCCL for CUDA
tensors, each process on its local GPU; gloo for CPU tensors) with `device.dist_timeout_min`,
and a second gloo group for small host-side exchanges; the group lives as long as the process
(the jobs of a sweep under torchrun share it) and is destroyed at exit or after a failure.
Processes other than rank 0 print errors only and write no log file (`_quiet`); under torchrun
their Hydra directory is a throwaway temporary folder (`follower_overrides`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import warnings
from datetime import timedelta
from typing import TYPE_CHECKING, Optional

from omegaconf import DictConfig

if TYPE_CHECKING:
    from dlrun.engine.distributed import Ranks

# torch and dlrun.distributed (which brings torchvision) are imported only where a process group is
# made or torn down: the CLI reads this process's rank before anything heavy (a bad config fails fast).

log = logging.getLogger("dlrun")


_joined: Optional["Ranks"] = None  # the process group is per process: joined once, kept for a sweep's jobs


def join(device_cfg: DictConfig) -> Ranks:
    """This process's place in the run; the first call of a process with several ranks starts the process group.

    NCCL carries CUDA tensors (each process on its local GPU) and gloo CPU tensors, both with
    the `device.dist_timeout_min` timeout; the group is destroyed at exit.
    """
    import torch
    import torch.distributed as dist

    from dlrun.engine.distributed import Ranks

    global _joined
    if _joined is not None:
        return _joined
    place = _place_from_environment()
    if place is None or place[1] <= 1:
        return Ranks()
    rank, world, local_rank, local_world = place
    timeout = timedelta(minutes=device_cfg.dist_timeout_min)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout)
    atexit.register(leave)
    if rank != 0:
        _quiet()
    _joined = Ranks(rank, world, local_rank, local_world, dist.new_group(backend="gloo", timeout=timeout))
    log.info("distributed: %d processes (%s), %d on this host", world, backend, local_world)
    return _joined


def leave() -> None:
    """Destroy the process group (at exit, or after a failure): the other processes stop waiting for this one."""
    import torch.distributed as dist

    global _joined
    _joined = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def environment_rank() -> int:
    """This process's rank as the launcher's environment says it, before any process group exists (0 if none)."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return submitit.JobEnvironment().global_rank
    return 0


def follower_overrides() -> list[str]:
    """Hydra overrides for a torchrun process other than rank 0: its Hydra directory is a throwaway
    temporary folder (removed at exit), without .hydra/ files or Hydra's own messages."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or int(os.environ.get("RANK", "0")) == 0:
        return []
    scratch = tempfile.mkdtemp(prefix=f"dlrun-rank{os.environ['RANK']}-")
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    return [f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}", "hydra.output_subdir=null",
            "hydra/hydra_logging=disabled"]


def _place_from_environment() -> Optional[tuple[int, int, int, int]]:
    """(rank, world size, local rank, processes on this host) from torchrun's variables or submitit's job."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        world = int(os.environ["WORLD_SIZE"])
        return (int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")),
                int(os.environ.get("LOCAL_WORLD_SIZE", str(world))))
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        if submitit.JobEnvironment().num_tasks > 1:
            # MASTER_ADDR (the first node), MASTER_PORT (from the job id), RANK, WORLD_SIZE, LOCAL_RANK.
            env = submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            return env.rank, env.world_size, env.local_rank, env.local_world_size
    return None


def _quiet() -> None:
    """Processes other than rank 0 print errors only, and write no log file."""
    from dlrun.report.console import console  # rich, imported when a process group is made

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.FileHandler):
            root.removeHandler(handler)
            handler.close()
        else:
            handler.setLevel(logging.ERROR)
    console.quiet = True
    warnings.filterwarnings("ignore")  # rank 0 shows the same warnings
