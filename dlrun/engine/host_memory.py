"""How this process's C library hands out host memory (`device.host_allocator`).

A training step on the CPU allocates and frees the same large tensors every step (activations,
gradients: megabytes each). glibc's defaults serve large requests with a fresh `mmap` and give
freed memory at the top of the heap back to the system once more than a few megabytes are free,
so steps touch new pages: a LeNet step at batch 256 took about 3,000 page faults and 32 to 42 ms,
depending on the process, against none and 22-24 ms with freed memory kept (benchmarks/README.md).

`tuned` asks glibc to keep freed memory for reuse, as the jemalloc and tcmalloc settings that
PyTorch's CPU launcher (`torch.backends.xeon.run_cpu`) preloads do: requests under 32 MiB come
from the heap, the heap grows in 64 MiB steps and is not trimmed. Steady steps then take no page
faults; the process keeps its peak memory until it exits. `system` leaves the C library's
defaults. Other C libraries (musl, macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger("dlrun")
HOST_ALLOCATORS = ("tuned", "system")
# mallopt(3) parameters (malloc.h) and the values `tuned` sets.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
TUNED = {
    M_MMAP_THRESHOLD: 32 * 2**20,  # glibc's largest: a request under 32 MiB comes from the heap, reused
    M_TRIM_THRESHOLD: 2**31 - 1,  # free memory at the heap's top returned to the system only past 2 GiB
    M_TOP_PAD: 64 * 2**20,  # the heap grows by at least 64 MiB at a time
}
_tuned = False


def use_host_allocator(kind: str) -> bool:
    """Apply `kind` to this process (once; it cannot be undone). True when glibc was tuned."""
    global _tuned
    if kind != "tuned" or _tuned:
        return _tuned
    if platform.libc_ver()[0] != "glibc":
        log.debug("device.host_allocator=tuned: not glibc (%s), left as it is", platform.libc_ver()[0] or "unknown")
        return False
    libc = ctypes.CDLL(None)
    _tuned = all(libc.mallopt(parameter, value) == 1 for parameter, value in TUNED.items())
    log.debug("device.host_allocator=tuned: glibc keeps freed memory for reuse (%s)", "done" if _tuned else "refused")
    return _tuned
