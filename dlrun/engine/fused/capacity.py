"""How many members of a model fit in a stacked model on a device: `hydra.launcher.max_members`' default."""

from __future__ import annotations

import os

import torch

from dlrun.models.summary import ModelSummary

BYTES_PER_VALUE = 4  # float32
# Per parameter: the weight, its gradient and up to two optimizer states (Adam's moments).
COPIES_PER_PARAMETER = 4
# Per activation value: the output, what backward keeps of it, and its gradient.
COPIES_PER_ACTIVATION = 3


def member_bytes(summary: ModelSummary, batch_size: int) -> int:
    """What one member takes while it trains: parameters with their gradients and optimizer state, and
    the activations of a batch (each layer's output, from the model summary)."""
    activations = sum(_elements(row.output_shape) for row in summary.rows)
    return BYTES_PER_VALUE * (COPIES_PER_PARAMETER * summary.total_params
                              + COPIES_PER_ACTIVATION * activations * batch_size)


def free_bytes(device: torch.device) -> int:
    """Memory free on `device` now: the GPU's, or the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # no such counter here: assume a small machine
        return 4 * 2**30


def members_that_fit(summary: ModelSummary, batch_size: int, device: torch.device, share: float = 0.5) -> int:
    """Members that fit in `share` of the free memory (the rest: the data, the allocator's slack), at least 1."""
    return max(1, int(free_bytes(device) * share) // max(1, member_bytes(summary, batch_size)))


def _elements(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
