"""The training device and how PyTorch uses it: threads, host memory, cuDNN, determinism, memory format, compile.

A job's share of the machine when a sweep runs several at once is dlrun.machine's.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import torch
from omegaconf import DictConfig
from torch import nn

from dlrun.engine.compiling import CompileSwitch
from dlrun.engine.host_memory import use_host_allocator
from dlrun.errors import ConfigError
from dlrun.machine import ThreadChoice, choose_threads, gpu_for_job, parallel_jobs

log = logging.getLogger("dlrun")
# What configure_backends chose (threads are a setting of the whole process): said on the console.
_thread_choice = ThreadChoice(None)
_chosen_for: Optional[tuple[Any, int]] = None  # the (device.num_threads, jobs sharing the cores) it answers


def select_device(kind: str, job_num: int = 0, local_rank: Optional[int] = None) -> torch.device:
    """`auto` picks CUDA when a GPU is present; `cuda` without one is an error, not a fallback.

    One of several processes of a run (`local_rank`, dlrun.distributed) takes its own GPU.
    """
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA GPU is available here; use device=cpu or device=auto")
    if kind != "cuda":
        return torch.device(kind)
    count = torch.cuda.device_count()
    index = local_rank % count if local_rank is not None else gpu_for_job(job_num, count, parallel_jobs())
    torch.cuda.set_device(index)  # so libraries that allocate on "the current GPU" follow the job
    return torch.device("cuda", index)


def configure_backends(device_cfg: DictConfig, processes_here: int = 1) -> None:
    """Process-wide settings; call before the first CUDA operation (cuBLAS reads its env var once).

    CPU threads: as asked; `auto`, the cores free now (dlrun.machine.choose_threads); null, this
    process's share of the cores when a parallel sweep or a run on several processes
    (`processes_here` of them on this host) shares them. Host memory: freed
    memory kept for reuse unless device.host_allocator=system (dlrun.host_memory).
    """
    global _thread_choice, _chosen_for
    use_host_allocator(device_cfg.host_allocator)
    asked = (device_cfg.num_threads, parallel_jobs() * processes_here)
    if asked != _chosen_for:  # `auto` samples the load (0.1 s) once per process: folds and fused members reuse it
        _thread_choice, _chosen_for = choose_threads(*asked), asked
    if _thread_choice.threads is not None:
        torch.set_num_threads(_thread_choice.threads)
    torch.backends.cudnn.benchmark = bool(device_cfg.cudnn_benchmark) and not device_cfg.deterministic
    if torch.are_deterministic_algorithms_enabled() != bool(device_cfg.deterministic):
        # Only on a change: the call imports Inductor's config, 2 s at every start otherwise.
        torch.use_deterministic_algorithms(bool(device_cfg.deterministic))
    if device_cfg.deterministic:
        # cuBLAS is only reproducible with a fixed workspace (PyTorch's reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        log.info("deterministic algorithms on (CUBLAS_WORKSPACE_CONFIG=%s, cudnn.benchmark off)",
                 os.environ["CUBLAS_WORKSPACE_CONFIG"])


def describe_threads() -> str:
    """`2 CPU threads` and, for device.num_threads=auto, why: `1 CPU thread (auto: 2 cores, 1.0 busy with other work)`."""
    threads = torch.get_num_threads()
    why = f" ({_thread_choice.why})" if _thread_choice.why else ""
    return f"{threads} CPU thread{'s' if threads != 1 else ''}{why}"


def prepare_model(model: nn.Module, device_cfg: DictConfig) -> nn.Module:
    """Memory format and compilation (dlrun.compiling). Returns the module to call; `model` keeps the weights to save."""
    channels_last = use_memory_format(model, device_cfg)
    if device_cfg.compile is False:
        return model
    # compile=true or auto: dlrun.compiling compiles the training step (auto: when it pays) and times it.
    settings = (f"{next(model.parameters(), torch.empty(0)).device.type} amp={device_cfg.amp} "
                f"channels_last={channels_last} threads={torch.get_num_threads()}")
    return CompileSwitch(model, device_cfg.compile, device_cfg.compile_mode, settings)


def wants_channels_last(setting: Union[str, bool], model: nn.Module, device: torch.device, amp: str) -> bool:
    """device.channels_last: true or false as set; auto: NHWC for models with 2-D convolutions on
    the CPU, where oneDNN's NHWC convolutions trained every conv net of the curriculum faster
    (1.04-1.5x, benchmarks/README.md), and on CUDA with AMP, where tensor cores want NHWC
    (PyTorch's channels_last tutorial; fp32 on CUDA is left NCHW: not measured here)."""
    if setting != "auto":
        return bool(setting)
    has_convolutions = any(isinstance(module, nn.Conv2d) for module in model.modules())
    return has_convolutions and (device.type == "cpu" or amp != "off")


def use_memory_format(model: nn.Module, device_cfg: DictConfig) -> bool:
    """Give `model` the NHWC (channels_last) layout when `wants_channels_last`: its 4-D weights, and
    every 4-D input it is called with (a forward pre-hook, so training, evaluation, prediction and
    export see the same layout, after any augmentation). Returns whether it did."""
    device = next(model.parameters(), torch.empty(0)).device
    if not wants_channels_last(device_cfg.channels_last, model, device, device_cfg.amp):
        return False
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_inputs_to_channels_last)
    return True


def _inputs_to_channels_last(module: nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(value.contiguous(memory_format=torch.channels_last)
                 if isinstance(value, torch.Tensor) and value.dim() == 4 else value for value in inputs)
