"""What the C allocator does with host memory a training step frees.

glibc hands large freed blocks back to the kernel: those over its mmap threshold (which it adapts,
up to 32 MiB) and any free space at the heap's top over its trim threshold. The next tensor of that
size then gets fresh pages, and each 4 KiB page faults and is zeroed on its first write. A training
step frees and allocates the same activations step after step, so on CPU this repeats every step:
~6,000 page faults per step of the Fashion-MNIST main job's search, ~5 % of its wall time
(docs/performance.md). Keeping freed memory with the process, as PyTorch's caching allocator does
on CUDA, removes them; the peak resident memory of that job grew by ~8 %.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

_log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 << 20))


def user_tuned_allocator() -> bool:
    """Whether the environment already tunes glibc's malloc (``MALLOC_*_`` variables or
    ``GLIBC_TUNABLES``): the user's choice then stands."""
    return "GLIBC_TUNABLES" in os.environ or any(k.startswith("MALLOC_") and k.endswith("_") for k in os.environ)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse (large blocks from the heap, never trimmed) for the
    rest of the process. Returns whether it did: not off Linux, without glibc, or where
    :func:`user_tuned_allocator`."""
    if not sys.platform.startswith("linux") or user_tuned_allocator():
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt to speak to
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = all(mallopt(param, value) == 1 for param, value in _SETTINGS)
    if not done:
        _log.debug("glibc refused a mallopt setting; its defaults stay for the rest")
    return done
