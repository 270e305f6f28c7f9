"""Keep freed tensor memory in the process instead of returning it to the kernel every step.

PyTorch's CPU allocator is plain ``malloc``. glibc serves every request above its mmap
threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on ``free``; a training step
allocates and frees activations of tens of MiB (a batch of 2 x 256 Fashion-MNIST views through
the ConvNet: 51 MiB per feature map), so every step maps new pages, the kernel zero-fills each
4 KiB page on first touch, and unmaps them again. Measured on the default run: 83 million
minor page faults and 20% of the CPU time in the kernel.

:func:`keep_freed_memory` tells glibc (``mallopt``) to serve large blocks from the heap
(``M_MMAP_MAX=0``) and not to trim the heap's top back to the kernel (``M_TRIM_THRESHOLD``),
so the next step reuses the same pages. The resident size then stays at the peak of one step,
which training reaches anyway. It is applied once per training process; set
``TWINVIEW_KEEP_FREED_MEMORY=0`` to leave malloc as it is. A no-op where libc is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # return the heap's top to the kernel only beyond 1 GiB free

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Apply the malloc settings (once); True if they are in effect in this process."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("TWINVIEW_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith(
        "linux"
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _applied
