"""Process-level settings that make CPU training faster.

glibc returns every freed block larger than its mmap threshold to the OS, so each large tensor a
training step allocates (a critic ensemble's activations are (N, B * 31, 256) in CQL) comes back
as fresh pages that fault on first touch. Raising the mmap and trim thresholds keeps freed memory
in the heap for the next step. The training loops call :func:`keep_freed_memory` once; set
``HYBRIDRL_KEEP_FREED_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Keep freed blocks up to 32 MiB in the heap (glibc only); returns whether it applied."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if sys.platform != "linux" or os.environ.get("HYBRIDRL_KEEP_FREED_MEMORY", "1") == "0":
        return _applied
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl or another libc: nothing to tune
        return _applied
    _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
                    and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _applied
