"""The kernel loader: compiles ``kernels/*.cu`` for the device and launches their kernels.

Each ``kernels/<file>.cu`` holds ``template <typename T> __global__ void name(...)`` kernels.
``launch("pool", "max_pool2d_forward", dtype, grid, block, args)`` compiles the file once per
device (both float and double instantiations, through NVRTC with ``cupy.RawModule``) and
launches ``name<float>`` or ``name<double>``. With ``MINIDL_CUDA_EMULATE=1`` the same source
goes to the CPU emulator (``minidl/emulator.py``) instead; the caller cannot tell the difference.

Arguments are arrays (device pointers) and NumPy scalars whose dtype fixes the C type:
``i32(...)`` for ``int``, ``i64(...)`` for ``long long``, ``real(dtype, ...)`` for ``T``.

Your own kernels, from a ``.cu`` file in your own folder, go through the same cache, NVRTC
options and emulator: ``module = load_module("/path/to/my_op.cu")`` then
``module.launch("my_kernel", dtype, grid, block, args)`` (``launch`` also takes the path in place
of a name). The file may ``#include "common.cuh"`` (minidl's helpers) and headers beside it.
``docs/custom_op.md`` builds one op end to end.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np

from minidl import backend, dtypes
from minidl.kernel_source import (
    CTYPE_NAMES,
    kernel_names,
    kernel_parameters,
    kernel_types,
    name_expressions,
    parameter_type,
)

THREADS = 256  # threads per block for element-wise kernels (grid-stride loops)
REDUCE_THREADS = 256  # threads per block for block reductions; must match kernels/common.cuh
MAX_BLOCKS = 65535

# The C type of each dtype (minidl/kernel_source.py has the names a "// minidl-types:" line may
# use). bfloat16 storage is ml_dtypes.bfloat16 (minidl/dtypes.py), a NumPy dtype that CuPy takes
# too; when ml_dtypes is missing no bfloat16 array exists, so no bfloat16 kernel is asked for.
CTYPES = {
    dtypes.float32: "float",
    dtypes.float64: "double",
    dtypes.float16: "__half",
}
if dtypes.bfloat16 is not None:
    CTYPES[dtypes.bfloat16] = "__nv_bfloat16"
ARCHITECTURES = ("compute_75", "compute_80", "compute_90")

_override_dir: Path | None = None
_default_dir: Path | None = None
_modules: dict = {}
_module_types: dict = {}  # id(compiled module) -> (its C types, its kernels' parameters)
_signatures: dict = {}  # (id(module), kernel, dtype) -> each parameter's (text, dtype, pointer)
_good_shapes: set = set()  # (grid, block) pairs _check_launch_shape has passed

# the NumPy dtype of each fixed C type a parameter may have (T and acc_t<T> follow the launch's
# dtype); a parameter of another type is not checked
FIXED_CTYPES = {
    "int": np.int32,
    "unsigned int": np.uint32,
    "long long": np.int64,
    "unsigned long long": np.uint64,
    "float": np.float32,
    "double": np.float64,
}
MAX_THREADS_PER_BLOCK = 1024  # every GPU since compute capability 2.0
MAX_BLOCK = (1024, 1024, 64)
MAX_GRID = (2**31 - 1, 65535, 65535)


# ---- where the sources are -----------------------------------------------------------------------
def kernel_dir() -> Path:
    """The folder of ``.cu`` files: the repo's ``kernels/``, or ``minidl/kernels`` in a wheel."""
    global _default_dir
    if _override_dir is not None:
        return _override_dir
    if _default_dir is None:
        here = Path(__file__).resolve().parent
        candidates = (here.parent / "kernels", here / "kernels")
        found = [c for c in candidates if (c / "common.cuh").is_file()]
        if not found:
            raise FileNotFoundError(
                f"minidl: CUDA kernel sources not found in {candidates[0]} or {candidates[1]}"
            )
        _default_dir = found[0]
    return _default_dir


@contextlib.contextmanager
def kernel_source_override(folder):
    """Load kernels from another folder for a while (tests break a copy of a kernel on purpose)."""
    global _override_dir
    previous, _override_dir = _override_dir, Path(folder)
    try:
        yield
    finally:
        _override_dir = previous


def compile_options(*folders: Path) -> tuple[str, ...]:
    """NVRTC options: C++14, the folders for ``#include "common.cuh"`` (a user's kernel: its own
    folder, then ours), and a define holding the headers' hash, so CuPy's on-disk cache (keyed by
    source and options) notices a header edit."""
    headers = [h for folder in folders for h in sorted(Path(folder).glob("*.cuh"))]
    digest = hashlib.sha256(b"".join(h.read_bytes() for h in headers))
    toolkit = cuda_include_dirs()
    if not toolkit:
        raise RuntimeError(
            "minidl.cuda: NVRTC needs the CUDA headers cuda_fp16.h and cuda_bf16.h (kernels/"
            "common.cuh includes them) and none were found: pip install 'minidl[nvrtc]' (it brings "
            "cuda-toolkit[nvrtc,cudart]), or set CUDA_PATH to a CUDA toolkit"
        )
    includes = tuple(f"-I{folder}" for folder in (*folders, *toolkit))
    return ("-std=c++14", *includes, f"-DMINIDL_HEADERS={digest.hexdigest()[:16]}")


def cuda_include_dirs() -> tuple[str, ...]:
    """The CUDA toolkit's headers (cuda_fp16.h, cuda_bf16.h, which common.cuh includes): NVRTC has
    no default search path. Found as CuPy finds them (cuda-pathfinder), else $CUDA_PATH/include."""
    try:
        from cuda.pathfinder import find_nvidia_header_directory

        found = find_nvidia_header_directory("cudart")
    except Exception:  # no cuda-pathfinder, or it found nothing
        found = None
    if found is None:
        found = os.path.join(os.environ.get("CUDA_PATH", "/usr/local/cuda"), "include")
    return (found,) if os.path.isdir(found) else ()


# ---- launching -----------------------------------------------------------------------------------
def grid_for(count: int, threads: int = THREADS) -> tuple[int]:
    """Enough blocks to give every element a thread (kernels loop if the grid is capped)."""
    return (max(1, min(MAX_BLOCKS, -(-int(count) // threads))),)


def launch_1d(file: str | Path, kernel: str, dtype, count: int, args, threads: int = THREADS):
    """Launch ``kernel<T>`` with a thread for each of ``count`` elements: blocks of ``threads``
    threads in a 1-D grid (capped at MAX_BLOCKS; the kernels' grid-stride loops cover the rest).
    The launch shape of every element-wise kernel, written once."""
    launch(file, kernel, dtype, grid_for(count, threads), (threads,), args)


def i32(*values):
    return tuple(np.int32(v) for v in values) if len(values) != 1 else np.int32(values[0])


def i64(value):
    return np.int64(value)


def real(dtype, *values):
    """Scalars of the kernel's acc_t<T> (kernels/common.cuh), which is dtypes.compute_dtype:
    T itself for float and double, float for 16-bit T."""
    return tuple(dtypes.compute_dtype(dtype).type(v) for v in values)


def _source(file) -> tuple[Path, tuple[Path, ...], list[Path]]:
    """Where a kernel file is: (the .cu path, its include folders, the headers whose edits count).
    ``file`` is one of ours by name ("pool" -> kernels/pool.cu) or a path to a user's .cu file."""
    folder = kernel_dir()
    if isinstance(file, Path) or str(file).endswith(".cu"):
        path = Path(file).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"minidl.cuda: kernel file {path} does not exist")
        headers = sorted(path.parent.glob("*.cuh")) + [folder / "common.cuh"]
        return path, (path.parent, folder), headers
    return folder / f"{file}.cu", (folder,), [folder / "common.cuh"]


def _module(file):
    """The compiled ``kernels/<file>.cu`` (or a user's .cu path), cached per path, device and
    source version: a launch of ours costs two stat calls here, and an edited kernel (or header)
    is compiled again."""
    path, includes, headers = _source(file)
    device = "emulator" if backend.emulating() else backend.cupy().cuda.runtime.getDevice()
    version = (path.stat().st_mtime_ns, *(h.stat().st_mtime_ns for h in headers))
    key = (str(path), device, version)
    if key not in _modules:
        if device == "emulator":
            from minidl import emulator

            _modules[key] = emulator.load(path, include_dirs=includes[1:])
        else:
            source = path.read_text()
            _modules[key] = backend.cupy().RawModule(
                code=source,
                options=compile_options(*includes),
                name_expressions=name_expressions(source),
            )
    return _modules[key]


def compile_all(file: str | Path) -> str:
    """Compile every kernel of ``kernels/<file>.cu`` (or a ``.cu`` path) for every type its
    ``minidl-types`` line declares, for the current device; returns what was compiled. A launch
    compiles lazily; ``python -m minidl.check`` asks for everything at once."""
    module = _module(file)
    names = name_expressions(_source(file)[0].read_text())
    for name in names:
        if backend.emulating():
            if name not in module.symbols:
                raise KeyError(f"emulator: {file} has no instance {name}")
        else:
            module.get_function(name)  # NVRTC compiles the whole file on the first of these
    return f"{len(names)} kernel instances"


def launch(file: str | Path, kernel: str, dtype, grid, block, args) -> None:
    """Run ``kernel<T>`` from ``kernels/<file>.cu`` (or from a ``.cu`` path of your own) over
    ``grid`` x ``block`` threads."""
    module = _module(file)
    if id(module) not in _module_types:  # once per compiled module: its types and signatures
        source = _source(file)[0].read_text()
        _module_types[id(module)] = (kernel_types(source), kernel_parameters(source))
    types, parameters = _module_types[id(module)]
    expected = parameters.get(kernel)
    if expected is not None and len(args) != len(expected):
        # A GPU would read past the arguments given (garbage), the emulator would crash: say it.
        raise TypeError(
            f"{kernel} ({file}): takes {len(expected)} arguments ({', '.join(expected)}), got "
            f"{len(args)}"
        )
    ctype = CTYPES.get(np.dtype(dtype))
    if ctype not in types:  # e.g. an integer tensor, or float16 in a float/double-only file
        raise TypeError(
            f"{kernel} ({file}): no kernel instance for dtype {np.dtype(dtype)}; it is compiled "
            f"for {', '.join(CTYPE_NAMES[t] for t in types)}"
        )
    if expected is not None:
        _check_arguments(module, file, kernel, dtype, expected, args)
    _check_launch_shape(file, kernel, grid, block)
    name = f"{kernel}<{ctype}>"
    if backend.emulating():
        module.launch(name, tuple(grid), tuple(block), tuple(args))
    else:
        module.get_function(name)(tuple(grid), tuple(block), tuple(args))


def _signature(module, kernel: str, dtype, parameters: list[str]) -> list[tuple]:
    """Each parameter's (text, the dtype its argument must have or None, whether it is a
    pointer) for ``kernel<dtype>``: parsed once per module, kernel and dtype."""
    key = (id(module), kernel, dtype)
    if key not in _signatures:
        types = {"T": np.dtype(dtype), "acc_t<T>": dtypes.compute_dtype(dtype)}
        types.update({c: np.dtype(t) for c, t in FIXED_CTYPES.items()})
        _signatures[key] = [
            (p, types.get(parameter_type(p)[0]), parameter_type(p)[1]) for p in parameters
        ]
    return _signatures[key]


def _describe(value) -> str:
    if isinstance(value, np.generic):
        return f"a NumPy {value.dtype} scalar"
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return f"a {value.dtype} array"
    return f"a Python {type(value).__name__}"


def _check_arguments(module, file, kernel: str, dtype, parameters: list[str], args) -> None:
    """Refuse, before launching, an argument whose C type is not its parameter's: a GPU would
    read its bytes as the wrong type (a float64 array as floats, an int64 as an int). A few
    microseconds a launch: the signature is cached, and NumPy's dtypes compare by identity."""
    for position, (arg, (text, want, pointer)) in enumerate(
        zip(args, _signature(module, kernel, dtype, parameters))
    ):
        got = getattr(arg, "dtype", None)
        is_scalar = isinstance(arg, np.generic)
        kind_ok = got is not None and is_scalar != pointer  # an array for a pointer, else a scalar
        if kind_ok and (want is None or got is want or got == want):
            continue
        if pointer:
            expected = "an array" if want is None else f"a {want} array"
        else:
            expected = "a NumPy scalar" if want is None else f"a NumPy {want} scalar"
        raise TypeError(
            f"{kernel} ({file}): argument {position} '{text}' (T = {np.dtype(dtype)}) "
            f"expects {expected}, got {_describe(arg)}"
        )


def _check_launch_shape(file, kernel: str, grid, block) -> None:
    """Refuse what a GPU refuses (the emulator would run it): a zero or negative dimension,
    more than 1024 threads a block, a block or grid dimension past its limit. A shape that
    passed once is remembered: a training step repeats a few shapes, so this is a set lookup."""
    grid, block = tuple(grid), tuple(block)
    if (grid, block) in _good_shapes:
        return
    problem = None
    if not 1 <= len(grid) <= 3 or not 1 <= len(block) <= 3:
        problem = "grid and block take 1 to 3 dimensions"
    elif min(grid + block) < 1:
        problem = "every grid and block dimension must be at least 1"
    elif int(np.prod(block)) > MAX_THREADS_PER_BLOCK:
        problem = f"a block holds at most {MAX_THREADS_PER_BLOCK} threads"
    elif any(b > m for b, m in zip(block, MAX_BLOCK)) or any(g > m for g, m in zip(grid, MAX_GRID)):
        problem = f"limits: block {MAX_BLOCK}, grid {MAX_GRID}"
    if problem:
        raise ValueError(f"{kernel} ({file}): cannot launch grid {grid} x block {block}: {problem}")
    _good_shapes.add((grid, block))


class KernelModule:
    """The kernels of one ``.cu`` file of your own, loaded like ours (``load_module``)."""

    def __init__(self, path: Path):
        self.path = path
        self.kernels = kernel_names(path.read_text())
        if not self.kernels:
            raise ValueError(
                f"minidl.cuda: {path} defines no kernel of the form "
                "'template <typename T> __global__ void name(...)' (one per element type T)"
            )

    def launch(self, kernel: str, dtype, grid, block, args) -> None:
        """Run ``kernel<T>`` (T from ``dtype``) over ``grid`` x ``block`` threads; ``args`` as for
        ``launch``: arrays on the device and NumPy scalars (``i32``, ``i64``, ``real``)."""
        if kernel not in self.kernels:
            raise KeyError(
                f"minidl.cuda: {self.path.name} has no kernel {kernel!r}; it has {self.kernels}"
            )
        launch(self.path, kernel, dtype, grid, block, args)

    def __repr__(self) -> str:
        return f"KernelModule({str(self.path)!r}, kernels={self.kernels})"


def load_module(path) -> KernelModule:
    """Kernels from a ``.cu`` file anywhere (your own folder): compiled by NVRTC with our options
    (C++14, ``#include "common.cuh"`` works, headers beside the file too) or, under
    ``MINIDL_CUDA_EMULATE=1``, by the CPU emulator; cached per device like ours, and compiled again
    when the file or a header changes. Each kernel is ``template <typename T> __global__ void``."""
    resolved = Path(path).expanduser().resolve()
    if resolved.suffix != ".cu" or not resolved.is_file():
        raise FileNotFoundError(f"minidl.cuda.load_module: expected a .cu file, got {path}")
    return KernelModule(resolved)


def synchronize() -> None:
    """Wait for the GPU (before reading a clock); nothing to wait for under the emulator."""
    if not backend.emulating():
        backend.cupy().cuda.get_current_stream().synchronize()
