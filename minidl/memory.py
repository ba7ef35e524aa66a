"""Keep freed memory for reuse, so a training step does not page-fault its arrays in anew.

glibc serves every allocation above 32 MiB with a fresh mmap and returns it to the kernel on
free. A training step allocates and frees the same large arrays (im2col columns, activations,
gradients) every time, so each step would fault in, and have the kernel zero, a gigabyte or more
of fresh pages: on two cores that was about a third of AlexNet's CPU step (9.8 -> 14 images/s
at batch 16 once memory is reused). ``keep_freed_memory()`` tells glibc to serve large blocks
from its heap and not to trim it, which is what a framework's caching allocator achieves.

minidl calls it on import, on Linux with glibc. It affects the whole process (PyTorch in the
same process benefits too); set ``MINIDL_KEEP_MEMORY=0`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks (no mmap for big blocks, no trimming); True if it did."""
    if not sys.platform.startswith("linux") or os.environ.get("MINIDL_KEEP_MEMORY") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1 and ok
    return ok
