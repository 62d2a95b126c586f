"""What the C allocator does with the host memory a model frees.

glibc hands large freed blocks back to the kernel: those over its mmap threshold (which it adapts,
up to 32 MiB) and any free space at the heap's top over its trim threshold. The next tensor of that
size then gets fresh pages, and each 4 KiB page faults and is zeroed on its first write. A forward
or a training step frees and allocates the same activations call after call, so on CPU that cost
comes back every call wherever activations pass 32 MiB: at 224 px and batch 32, MobileNetV2 0.5's
eval forward took 541 ms by default and 210 ms with freed memory kept (``python -m benchmarks --only
child``, docs/performance.md). Training steps gained in some processes and not in others (at 160 px:
0.53× in a one-off script, 1.02× in the benchmark; transparent huge pages make the cost of a fault
vary), and the peak resident memory grows by 4-16 %. Keeping freed memory with the process, as
PyTorch's caching allocator does on CUDA, removes those faults. Small maps (the Fashion-MNIST main
job) hardly change: their blocks stay under the adaptive threshold.
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
    """Make glibc keep freed memory for reuse (blocks up to 1 GiB from the heap, never trimmed) for
    the rest of the process: faster CPU training and inference on large activations, for more
    resident memory. Returns whether it did: not off Linux, without glibc, or where
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
