"""Split-K GEMM on the GPU: a product with a long inner dimension and a small output, cut into
slices that keep every multiprocessor busy (the convolution's weight gradient uses it).

This is a speed measure, not a new piece of math: ``matmul_nt_split_k(a, b)`` equals
``a @ b.transpose(0, 2, 1)``. It calls cuBLAS directly (through CuPy) on the GPU and multiplies the
same slices with NumPy under the emulator. ``docs/conv.md`` says where it pays (AlexNet's conv1
weight gradient: 3 output tiles for 132 multiprocessors).
"""

from __future__ import annotations

import numpy as np

from minidl import backend, dtypes

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
    device = backend.cupy().cuda.runtime.getDevice()
    if device not in _multiprocessors:
        _multiprocessors[device] = (
            backend.cupy().cuda.Device(device).attributes["MultiProcessorCount"]
        )
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
    if len(bounds) == 1 or a.dtype.type not in (np.float32, np.float64):
        # Enough tiles already, or 16-bit storage (cuBLAS's float16 GEMM through CuPy's matmul
        # accumulates in float32; the strided-batched routines below are float32/float64 only):
        # a plain (batched) GEMM.
        return dtypes.matmul(a, b.transpose(0, 2, 1))
    partial = xp.empty((len(bounds), g, p, q), dtype=a.dtype)
    if backend.emulating():
        for s, (lo, hi) in enumerate(bounds):
            np.matmul(a[:, :, lo:hi], b[:, :, lo:hi].transpose(0, 2, 1), out=partial[s])
        return partial.sum(axis=0)
    # cuBLAS is column-major: a row-major (R, C) block with row stride M is a column-major
    # (C, R) matrix with leading dimension M. partial[s, g] (P, Q) row-major is column-major
    # (Q, P) = b_s (Q, Mc) @ a_s^T (Mc, P): b transposed ("T"), a as it is ("N").
    cublas = backend.cublas()
    gemm = {np.float32: cublas.sgemmStridedBatched, np.float64: cublas.dgemmStridedBatched}[
        a.dtype.type
    ]
    op_n, op_t = 0, 1  # cublasOperation_t: CUBLAS_OP_N, CUBLAS_OP_T
    one, zero = np.ones(1, a.dtype), np.zeros(1, a.dtype)
    handle = backend.cupy().cuda.device.get_cublas_handle()
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
