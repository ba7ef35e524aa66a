"""The kernel emulator: runs ``kernels/*.cu`` on the CPU, for CI, for machines without a GPU, and
for students who want to step through a kernel.

``load(path)`` compiles the very same ``.cu`` source with the host C++ compiler after a small
shim (``minidl/emu_shim.h``: ``blockIdx``/``threadIdx`` driven by loops over the grid,
``__shared__`` per block, ``__syncthreads()`` through fibers) into a shared library, cached by the
hash of every source involved, and returns a module whose ``launch(name, grid, block, args)``
takes the same arguments as a CuPy ``RawKernel`` call, with NumPy arrays for device pointers.

It is slow, and that is fine: it exists to catch wrong index arithmetic and to teach. Races and
timing are what the GPU tier is for. Set ``CXX`` to pick the compiler; add ``-g -O0`` through
``MINIDL_EMU_CFLAGS`` to step through a kernel in gdb.

16-bit storage: ``__half`` arrays are NumPy float16 arrays and ``__nv_bfloat16`` arrays are
``ml_dtypes.bfloat16`` arrays (``minidl/dtypes.py``), the same dtypes a CuPy array has on the GPU;
a kernel sees their 16 bits. The shim's ``__half``/``__nv_bfloat16`` round float to nearest even
exactly as ``__float2half_rn``/``__float2bfloat16_rn``.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shlex
import subprocess
from pathlib import Path

import numpy as np

from minidl import bounds, dtypes, kernel_source

SHIM = Path(__file__).resolve().parent / "emu_shim.h"

_SCALARS = {
    np.dtype(np.int32): ctypes.c_int32,
    np.dtype(np.int64): ctypes.c_int64,
    np.dtype(np.uint32): ctypes.c_uint32,
    np.dtype(np.uint64): ctypes.c_uint64,
    np.dtype(np.float32): ctypes.c_float,
    np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.uint16): ctypes.c_uint16,
}


# A shared library of C++17; -fno-gnu-unique keeps each library's template statics (our
# __shared__ arrays) its own: as "GNU unique" symbols the dynamic linker would merge them by name
# across libraries, so a copy of a kernel loaded beside ours (a planted mutation, a user's file
# with the same kernel name) would share our shared-memory arrays.
BUILD_FLAGS = ("-std=c++17", "-shared", "-fPIC", "-fno-gnu-unique")


def cache_dir() -> Path:
    root = os.environ.get("MINIDL_CACHE") or Path.home() / ".cache" / "minidl"
    folder = Path(root) / "emulator"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class EmulatedModule:
    """A compiled ``.cu`` file: each kernel instantiation is an exported C function."""

    def __init__(self, library: ctypes.CDLL, symbols: dict[str, str], parameters=None):
        self.library = library
        self.symbols = symbols  # "max_pool2d_forward<float>" -> "minidl_emu_0"
        self.parameters = parameters or {}  # "max_pool2d_forward" -> ["const T* x", ...]

    def launch(self, name: str, grid: tuple, block: tuple, args: tuple) -> None:
        """Run kernel ``name`` (e.g. "relu_forward<float>"); with ``MINIDL_EMU_CHECK=1``
        bounds-checked (``minidl/bounds.py``): an access outside an array raises
        ``bounds.OutOfBoundsError`` naming the thread, the argument and the index."""
        if name not in self.symbols:
            raise KeyError(f"emulator: no kernel {name}; this file has {sorted(self.symbols)}")
        grid3 = (ctypes.c_uint * 3)(*(tuple(grid) + (1, 1, 1))[:3])
        block3 = (ctypes.c_uint * 3)(*(tuple(block) + (1, 1, 1))[:3])
        function = getattr(self.library, self.symbols[name])
        function.restype = ctypes.c_int

        def call(values, fault=None) -> int:  # values: kept alive until the call returns
            pointers = (ctypes.c_void_p * max(1, len(values)))(
                *(ctypes.addressof(v) for v in values)
            )
            return function(grid3, block3, pointers, None if fault is None else ctypes.byref(fault))

        if bounds.enabled():
            parameters = self.parameters.get(name.split("<")[0], [])
            bounds.checked_launch(call, name, tuple(args), _marshal, parameters)
        else:
            call([_marshal(i, a) for i, a in enumerate(args)])


def _marshal(position: int, value):
    """One kernel argument as a ctypes object holding its value (a pointer, for an array)."""
    if isinstance(value, np.ndarray):
        if not value.flags.c_contiguous:
            raise ValueError(f"emulator: argument {position} must be a C-contiguous array")
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.generic) and dtypes.is_16bit(value.dtype):  # pass the 16 bits
        return ctypes.c_uint16(int(value.view(np.uint16)))
    if isinstance(value, np.generic) and value.dtype in _SCALARS:
        return _SCALARS[value.dtype](value.item())
    raise TypeError(
        f"emulator: argument {position} is {type(value).__name__}; pass arrays and NumPy scalars "
        "(np.int32, np.int64, np.uint32, np.float16, np.float32, np.float64, bfloat16) so the "
        "C type is explicit"
    )


def translation_unit(path: Path, source: str, include_dirs=()) -> tuple[str, dict[str, str]]:
    """The C++ file that includes the shim and the kernel source and exports each kernel."""
    barriers = kernels_with_barriers(source, included_headers(path, source, include_dirs))
    expressions = kernel_source.name_expressions(source)
    symbols = {expr: f"minidl_emu_{i}" for i, expr in enumerate(expressions)}
    lines = [f'#include "{SHIM}"', f'#include "{path}"']
    for expr, symbol in symbols.items():
        fibers = int(expr.split("<")[0] in barriers)
        lines.append(f"MINIDL_EMU_EXPORT({expr}, {symbol}, {fibers})")
    return "\n".join(lines) + "\n", symbols


def included_headers(path: Path, source: str, include_dirs=()) -> str:
    """The text of the headers ``source`` includes with ``#include "name"`` (found in ``path``'s
    folder, then ``include_dirs``), so that a ``__device__`` helper defined there, such as
    common.cuh's block_sum, counts for kernels_with_barriers. One level: the headers' own
    includes are not followed (common.cuh has none of ours)."""
    texts = []
    for name in re.findall(r'^\s*#\s*include\s*"([^"]+)"', source, flags=re.M):
        for folder in (path.parent, *include_dirs):
            if (Path(folder) / name).is_file():
                texts.append((Path(folder) / name).read_text())
                break
    return "\n".join(texts)


def kernels_with_barriers(source: str, headers: str = "") -> set[str]:
    """Kernels that reach __syncthreads(), in their own body or through the ``__device__``
    functions they call, defined in ``source`` or in ``headers`` (the text of the headers it
    includes, see included_headers): they run as fibers, the others as plain loops."""
    bodies = function_bodies(headers + "\n" + source)
    barrier = {name for name, body in bodies.items() if "__syncthreads" in body}
    grown = True
    while grown:  # a function that calls a function with a barrier has one too
        calls = re.compile(r"\b(?:" + "|".join(map(re.escape, barrier)) + r")\s*[(<]")
        reached = {name for name, body in bodies.items() if barrier and calls.search(body)}
        grown = not reached <= barrier
        barrier |= reached
    return barrier & set(kernel_source.kernel_names(source))


_NOT_FUNCTIONS = {"if", "for", "while", "switch", "return", "sizeof", "catch"}


def function_bodies(source: str) -> dict[str, str]:
    """name -> the text between a definition's braces, for every ``name(...) {`` in the source
    (kernels, __device__ helpers; a macro such as FOR_EACH_INDEX(...) { counts too, which only
    errs on the safe side: more fibers, never fewer)."""
    source = re.sub(r"//[^\n]*|/\*.*?\*/", " ", source, flags=re.S)  # comments are not code
    bodies: dict[str, str] = {}
    for match in re.finditer(
        r"\b(\w+)\s*(?:<[^<>;{}]*>)?\s*\([^;{}()]*(?:\([^;{}()]*\)[^;{}()]*)*\)\s*(?:const\s*)?\{",
        source,
    ):
        name = match.group(1)
        if name in _NOT_FUNCTIONS:
            continue
        depth, end = 1, match.end()
        while depth and end < len(source):
            depth += {"{": 1, "}": -1}.get(source[end], 0)
            end += 1
        bodies[name] = bodies.get(name, "") + source[match.end() : end]
    return bodies


def load(path, include_dirs=()) -> EmulatedModule:
    """Compile ``path`` for the emulator, or reuse the library built from the same sources
    (minidl.cuda keeps the loaded module, so this runs once per file and version).
    ``include_dirs``: more folders for ``#include`` after the file's own (a user's kernel finds
    minidl's ``common.cuh`` there)."""
    path = Path(path).resolve()
    include_dirs = tuple(Path(d).resolve() for d in include_dirs)
    source = path.read_text()
    unit, symbols = translation_unit(path, source, include_dirs)
    digest = hashlib.sha256()
    for text in (
        SHIM.read_text(),
        unit,
        " ".join(BUILD_FLAGS),
        os.environ.get("MINIDL_EMU_CFLAGS", ""),
    ):
        digest.update(text.encode())
    for folder in (path.parent, *include_dirs):
        for header in sorted(folder.glob("*.cuh")):
            digest.update(header.read_bytes())
    digest.update(path.read_bytes())
    library = cache_dir() / f"{path.stem}-{digest.hexdigest()[:20]}.so"
    handle = _open_complete(library, symbols) if library.exists() else None
    if handle is None:  # not built yet, or a cached library without our kernels: build it again
        handle = _compile(unit, path, library, symbols, include_dirs)
    return EmulatedModule(handle, symbols, kernel_source.kernel_parameters(source))


def _open_complete(library: Path, symbols: dict[str, str]) -> ctypes.CDLL | None:
    """The library, or None when it lacks one of ``symbols``. A library compiled from an empty
    or cut-off ``.cpp`` (the race that writing the ``.cpp`` in place once had between parallel
    workers) exports nothing; the cache must never hand it out again."""
    handle = ctypes.CDLL(str(library))
    return handle if all(hasattr(handle, symbol) for symbol in symbols.values()) else None


def compiler_version() -> str:
    """The first line of ``$CXX --version`` (g++ when CXX is not set), or why there is none."""
    compiler = os.environ.get("CXX", "g++")
    try:
        result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return f"no C++ compiler {compiler!r} (apt-get install g++, or set CXX)"
    return result.stdout.splitlines()[0] if result.stdout else compiler


def _compile(unit: str, path: Path, library: Path, symbols, include_dirs=()) -> ctypes.CDLL:
    """Build ``library`` from ``unit`` and return it loaded. Parallel test workers and MPI ranks
    may build the same file at once, so both files appear by an atomic rename: the ``.cpp`` (kept
    beside the library for gdb) is whole whenever the compiler opens it, and the library is
    whole, with every kernel of ``symbols``, whenever another process loads it."""
    cpp = library.with_suffix(".cpp")
    written = library.with_suffix(f".{os.getpid()}.cpp.tmp")
    written.write_text(unit)
    written.replace(cpp)
    compiler = os.environ.get("CXX", "g++")
    flags = shlex.split(os.environ.get("MINIDL_EMU_CFLAGS", "-O2"))
    partial = library.with_suffix(f".{os.getpid()}.tmp")
    command = [
        compiler,
        *BUILD_FLAGS,
        *flags,
        f"-I{path.parent}",
        *(f"-I{folder}" for folder in include_dirs),
        "-o",
        str(partial),
        str(cpp),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(
            f"emulator: the C++ compiler {compiler!r} was not found (it is $CXX, or g++ when "
            "CXX is not set). Install one (Debian/Ubuntu: apt-get install g++; Fedora: dnf "
            "install gcc-c++; macOS: xcode-select --install) or set CXX to a compiler on your "
            "PATH, e.g. CXX=clang++"
        ) from None
    if result.returncode != 0:
        raise RuntimeError(
            f"emulator: {compiler} could not compile {path.name}:\n{result.stderr[-4000:]}"
        )
    handle = _open_complete(partial, symbols)
    if handle is None:
        partial.unlink()
        raise RuntimeError(
            f"emulator: {compiler} compiled {path.name} into a library without its kernels "
            f"({', '.join(symbols)}); {cpp} is the file it compiled"
        )
    partial.replace(library)
    return handle
