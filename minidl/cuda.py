"""The kernel loader: the one module that imports CuPy.

Each ``kernels/<file>.cu`` holds ``template <typename T> __global__ void name(...)`` kernels.
``launch("pool", "max_pool2d_forward", dtype, grid, block, args)`` compiles the file once per
device (both float and double instantiations, through NVRTC with ``cupy.RawModule``) and
launches ``name<float>`` or ``name<double>``. With ``MINIDL_CUDA_EMULATE=1`` the same source
goes to the CPU emulator (``minidl/emulator.py``) instead; the caller cannot tell the difference.

Arguments are arrays (device pointers) and NumPy scalars whose dtype fixes the C type:
``i32(...)`` for ``int``, ``i64(...)`` for ``long long``, ``real(dtype, ...)`` for ``T``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

import numpy as np

from minidl import backend

THREADS = 256  # threads per block for element-wise kernels (grid-stride loops)
REDUCE_THREADS = 256  # threads per block for block reductions; must match kernels/common.cuh
MAX_BLOCKS = 65535

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
ARCHITECTURES = ("compute_75", "compute_80", "compute_90")

_override_dir: Path | None = None
_default_dir: Path | None = None
_modules: dict = {}


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


def kernel_names(source: str) -> list[str]:
    """The templated ``__global__`` kernels a source defines."""
    return re.findall(r"template\s*<\s*typename\s+T\s*>\s*__global__\s+void\s+(\w+)", source)


def name_expressions(source: str) -> list[str]:
    return [f"{name}<{ctype}>" for name in kernel_names(source) for ctype in CTYPES.values()]


def compile_options(folder: Path) -> tuple[str, ...]:
    """NVRTC options: C++14, the folder for ``#include "common.cuh"``, and a define holding the
    headers' hash, so CuPy's on-disk cache (keyed by source and options) notices a header edit."""
    digest = hashlib.sha256(b"".join(h.read_bytes() for h in sorted(folder.glob("*.cuh"))))
    return ("-std=c++14", f"-I{folder}", f"-DMINIDL_HEADERS={digest.hexdigest()[:16]}")


# ---- CuPy and the GPU ----------------------------------------------------------------------------
def cupy():
    """Import CuPy, or explain what is missing."""
    try:
        import cupy as cp
    except ImportError as err:
        raise RuntimeError(
            "device='cuda' needs CuPy: pip install 'minidl[cuda13]' (or [cuda12]), "
            "or set MINIDL_CUDA_EMULATE=1 to run the CUDA kernels on the CPU emulator"
        ) from err
    return cp


_gpu_checked = False


def require_gpu() -> None:
    """Fail clearly without CuPy or a GPU; asked once per process (every tensor creation on
    "cuda" calls this)."""
    global _gpu_checked
    if _gpu_checked:
        return
    cp = cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy raises its own CUDARuntimeError without a driver
        raise RuntimeError(
            f"device='cuda' needs an NVIDIA GPU and driver ({err}); "
            "set MINIDL_CUDA_EMULATE=1 to run the CUDA kernels on the CPU emulator"
        ) from None
    if count < 1:
        raise RuntimeError("device='cuda': CuPy sees no GPU; MINIDL_CUDA_EMULATE=1 emulates one")
    _gpu_checked = True


def gpu_available() -> bool:
    if backend.emulating():
        return False
    try:
        require_gpu()
    except RuntimeError:
        return False
    return True


# ---- launching -----------------------------------------------------------------------------------
def grid_for(count: int, threads: int = THREADS) -> tuple[int]:
    """Enough blocks to give every element a thread (kernels loop if the grid is capped)."""
    return (max(1, min(MAX_BLOCKS, -(-int(count) // threads))),)


def i32(*values):
    return tuple(np.int32(v) for v in values) if len(values) != 1 else np.int32(values[0])


def i64(value):
    return np.int64(value)


def real(dtype, *values):
    """Scalars of the kernel's element type T."""
    return tuple(np.dtype(dtype).type(v) for v in values)


def _module(file: str):
    """The compiled ``kernels/<file>.cu``, cached per folder, device and source version: a launch
    costs two stat calls here, and an edited kernel (or common.cuh) is compiled again."""
    folder = kernel_dir()
    path = folder / f"{file}.cu"
    device = "emulator" if backend.emulating() else cupy().cuda.runtime.getDevice()
    version = (path.stat().st_mtime_ns, (folder / "common.cuh").stat().st_mtime_ns)
    key = (str(path), device, version)
    if key not in _modules:
        if device == "emulator":
            from minidl import emulator

            _modules[key] = emulator.load(path)
        else:
            source = path.read_text()
            _modules[key] = cupy().RawModule(
                code=source,
                options=compile_options(folder),
                name_expressions=name_expressions(source),
            )
    return _modules[key]


def launch(file: str, kernel: str, dtype, grid, block, args) -> None:
    """Run ``kernel<T>`` from ``kernels/<file>.cu`` over ``grid`` x ``block`` threads."""
    name = f"{kernel}<{CTYPES[np.dtype(dtype)]}>"
    module = _module(file)
    if backend.emulating():
        module.launch(name, tuple(grid), tuple(block), tuple(args))
    else:
        module.get_function(name)(tuple(grid), tuple(block), tuple(args))


# ---- cuBLAS --------------------------------------------------------------------------------------
# Output tiles cuBLAS's float32 kernels compute per thread block (about 128 x 128), and how many
# such tiles keep every multiprocessor busy: used to choose how far to split a long inner dimension.
GEMM_TILE = 128
TILES_PER_SM = 2
MIN_SLICE = 2048  # inner-dimension length below which a slice is too short to pay for itself


def split_k_bounds(inner: int, tiles: int, multiprocessors: int) -> list[tuple[int, int]]:
    """Cut an inner dimension of length ``inner`` into equal slices (the last one takes the
    remainder) so that ``tiles`` output tiles times the slices fill ``multiprocessors``."""
    wanted = -(-TILES_PER_SM * multiprocessors // max(1, tiles))
    slices = max(1, min(wanted, inner // MIN_SLICE))
    size = inner // slices
    bounds = [(s * size, (s + 1) * size) for s in range(slices)]
    if bounds[-1][1] < inner:
        bounds[-1] = (bounds[-1][0], inner)
    return bounds


_multiprocessors: dict = {}


def multiprocessor_count() -> int:
    """The current GPU's multiprocessors (132 on an H100 SXM); 132 under the emulator."""
    if backend.emulating():
        return 132
    device = cupy().cuda.runtime.getDevice()
    if device not in _multiprocessors:
        _multiprocessors[device] = cupy().cuda.Device(device).attributes["MultiProcessorCount"]
    return _multiprocessors[device]


def matmul_nt_split_k(a, b):
    """``a @ b^T`` per group for a: (G, P, M) and b: (G, Q, M): (G, P, Q).

    A product with a long inner dimension M and a small output, such as a convolution's weight
    gradient dy (O, N*L) @ cols^T (N*L, K), has too few output tiles to occupy a GPU (AlexNet's
    conv1: 3 tiles of 128 x 128 for 132 multiprocessors), so one GEMM runs at a fraction of the
    chip's rate. "Split-K": cut M into S slices, compute the S partial products as one
    strided-batched cuBLAS call (S times more tiles), and add them up in a fixed order:

        out[g] = sum_s a[g][:, slice s] @ b[g][:, slice s]^T

    Under the emulator the same slices are multiplied with NumPy.
    """
    xp = backend.xp("cuda")
    a, b = xp.ascontiguousarray(a), xp.ascontiguousarray(b)  # the strides below assume it
    g, p, m = a.shape
    q = b.shape[1]
    tiles = g * -(-p // GEMM_TILE) * -(-q // GEMM_TILE)
    bounds = split_k_bounds(m, tiles, multiprocessor_count())
    if len(bounds) == 1:  # enough tiles already: a plain (batched) GEMM
        return xp.matmul(a, b.transpose(0, 2, 1))
    partial = xp.empty((len(bounds), g, p, q), dtype=a.dtype)
    if backend.emulating():
        for s, (lo, hi) in enumerate(bounds):
            np.matmul(a[:, :, lo:hi], b[:, :, lo:hi].transpose(0, 2, 1), out=partial[s])
        return partial.sum(axis=0)
    # cuBLAS is column-major: a row-major (R, C) block with row stride M is a column-major
    # (C, R) matrix with leading dimension M. partial[s, g] (P, Q) row-major is column-major
    # (Q, P) = b_s (Q, Mc) @ a_s^T (Mc, P): b transposed ("T"), a as it is ("N").
    from cupy_backends.cuda.libs import cublas

    gemm = {np.float32: cublas.sgemmStridedBatched, np.float64: cublas.dgemmStridedBatched}[
        a.dtype.type
    ]
    op_n, op_t = 0, 1  # cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T
    one, zero = np.ones(1, a.dtype), np.zeros(1, a.dtype)
    handle = cupy().cuda.device.get_cublas_handle()
    size = bounds[0][1] - bounds[0][0]
    runs = [(0, len(bounds) - 1, size), (len(bounds) - 1, 1, bounds[-1][1] - bounds[-1][0])]
    for first, count, k in runs:  # the equal slices in one call, then the last (longer) one
        for group in range(g):
            offset = first * size * a.itemsize
            gemm(
                handle, op_t, op_n, q, p, k,
                one.ctypes.data,
                b[group].data.ptr + offset, m, size,
                a[group].data.ptr + offset, m, size,
                zero.ctypes.data,
                partial[first, group].data.ptr, q, g * p * q,
                count,
            )  # fmt: skip
    return partial.sum(axis=0)


def synchronize() -> None:
    """Wait for the GPU (before reading a clock); nothing to wait for under the emulator."""
    if not backend.emulating():
        cupy().cuda.get_current_stream().synchronize()
