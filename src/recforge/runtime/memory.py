"""Keep freed memory in the process (CPU training).

A training step allocates the same large temporaries every step. glibc's malloc serves blocks
above a size threshold with mmap and gives them back on free, so every step faults the same
pages in again; in a VM that is 10-20% of an NCF step here. jemalloc and tcmalloc avoid it by
keeping memory; glibc does too once the mmap and trim thresholds are raised.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

import torch

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Serve allocations up to `limit` bytes from the heap and do not trim it; False if not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, limit) and libc.mallopt(M_TRIM_THRESHOLD, 2 * limit))
    except (OSError, AttributeError):  # another C library
        return False


def peak_memory(device: torch.device) -> tuple[int, int]:
    """(this process's peak resident memory, its peak GPU memory allocated; 0 on CPUs), in bytes."""
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return host, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0


def fits_in_memory(nbytes: int, device: torch.device, fraction: float) -> bool:
    """Whether `nbytes` fit in `fraction` of this process's share of memory: its GPU's, or the
    machine's RAM split among the processes torchrun started on it."""
    if device.type == "cuda":
        return nbytes < fraction * torch.cuda.get_device_properties(device).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return nbytes < fraction * ram / int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
