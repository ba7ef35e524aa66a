"""The emulator's bounds-checked mode (``MINIDL_EMU_CHECK=1``): a kernel's out-of-bounds access
becomes an error that names the kernel, the thread, the argument and the index.

On a GPU an index past an array reads garbage or writes over a neighbour; under the plain
emulator it does the same to host memory, or kills Python with SIGSEGV. In this mode each array
argument is copied into memory laid out as

    [ 4 GiB inaccessible ][ the array, its last byte at a page's end ][ 4 GiB inaccessible ]

(``mmap`` with no access rights reserves address space, not memory), so touching any element
past the end faults at once. The shim (``minidl/emu_shim.h``, ``emu::Trap``) catches that fault
during the launch, records the address and the running block and thread, and returns; this
module turns the address back into "argument k, element i". Because the array ends at a page
boundary, an index just below 0 lands in the same page and would not fault: so every launch runs
twice, the second time with each array starting at a page's beginning. The inputs are copied
afresh for each run and the results are copied back only after both passed. Slow (two runs and
two copies per array), and meant for debugging a kernel, as ``compute-sanitizer`` is on a GPU.
"""

from __future__ import annotations

import ctypes
import mmap
import os

import numpy as np

GUARD = 1 << 32  # bytes of inaccessible address space on each side of an array
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_PROT_NONE = 0  # <sys/mman.h>; Python's mmap module has PROT_READ and PROT_WRITE only


class Fault(ctypes.Structure):
    """What the shim's SIGSEGV handler records (``emu::Fault``)."""

    _fields_ = [
        ("address", ctypes.c_ulonglong),
        ("block", ctypes.c_uint * 3),
        ("thread", ctypes.c_uint * 3),
    ]


class OutOfBoundsError(RuntimeError):
    """A kernel read or wrote outside its array arguments (the bounds-checked emulator)."""


def enabled() -> bool:
    return os.environ.get("MINIDL_EMU_CHECK", "") not in ("", "0")


class GuardedCopy:
    """A copy of ``array`` between two inaccessible regions; ``at_end``: its last byte is the
    last of a page (an index past the end faults), else its first byte is a page's first (an
    index below 0 faults)."""

    def __init__(self, array: np.ndarray, at_end: bool):
        self.array = array
        self.span = -(-array.nbytes // PAGE) * PAGE  # whole pages holding the data
        self.total = GUARD + self.span + GUARD
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE
        base = _libc.mmap(None, self.total, _PROT_NONE, flags, -1, 0)
        if base in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "bounds check: mmap of a guarded copy failed")
        self.base = base
        if self.span:
            _libc.mprotect(base + GUARD, self.span, mmap.PROT_READ | mmap.PROT_WRITE)
        self.start = base + GUARD + (self.span - array.nbytes if at_end else 0)
        ctypes.memmove(self.start, array.ctypes.data, array.nbytes)

    def holds(self, address: int) -> bool:
        return self.base <= address < self.base + self.total

    def index(self, address: int) -> int:
        """The element ``address`` falls in, counted from the array's start (may be < 0)."""
        return (address - self.start) // self.array.itemsize

    def copy_back(self) -> None:
        ctypes.memmove(self.array.ctypes.data, self.start, self.array.nbytes)

    def free(self) -> None:
        _libc.munmap(self.base, self.total)


def checked_launch(call, name: str, args: tuple, marshal, parameters: list[str]) -> None:
    """Run ``call(values, fault)`` (one launch of kernel ``name``) twice on guarded copies of
    the array arguments, raising OutOfBoundsError on a fault; copy the results back after."""
    for at_end in (True, False):
        copies = {i: GuardedCopy(a, at_end) for i, a in enumerate(args) if _is_array(a)}
        try:
            values = [
                ctypes.c_void_p(copies[i].start) if i in copies else marshal(i, a)
                for i, a in enumerate(args)
            ]
            fault = Fault()
            if call(values, fault):
                raise OutOfBoundsError(_describe(name, fault, copies, parameters))
            if not at_end:
                for copy in copies.values():
                    copy.copy_back()
        finally:
            for copy in copies.values():
                copy.free()


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray)


def _describe(name: str, fault: Fault, copies: dict, parameters: list[str]) -> str:
    block, thread = tuple(fault.block), tuple(fault.thread)
    where = f"{name}: block {block}, thread {thread}"
    for i, copy in copies.items():
        if copy.holds(fault.address):
            size = copy.array.size
            what = parameters[i] if i < len(parameters) else f"argument {i}"
            return (
                f"{where} accessed element {copy.index(fault.address)} of argument {i} "
                f"({what}), which has {size} element(s) (valid: 0..{size - 1})"
            )
    return f"{where} accessed address {fault.address:#x}, outside every array argument"
