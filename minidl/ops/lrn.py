"""Local response normalization across channels, as in the paper (section 3.3):

    s[c] = k + alpha * sum_{j = max(0, c - n//2)}^{min(C - 1, c + n//2)} a[j]^2
    b[c] = a[c] * s[c]^(-beta)

``alpha`` is NOT divided by ``n`` here. PyTorch's ``nn.LocalResponseNorm`` and Caffe divide it by
``size``: torch's ``LocalResponseNorm(size, alpha=a * size, beta, k)`` equals ours with
``alpha=a``. The paper's values are n=5, k=2, alpha=1e-4, beta=0.75. ``n`` must be odd, so the
window is centred.

Backward (the window is symmetric, so "the windows that contain j" is the window around j):

    da[j] = db[j] * s[j]^(-beta) - 2 alpha beta a[j] * sum_{c in window(j)} db[c] * b[c] / s[c]

The NumPy path computes the window sum with n - 1 shifted in-place adds; ``kernels/lrn.cu`` runs
one thread per element (n, c, h, w) that sums its own channel window.
Page: docs/lrn.md. Plain definition: tests/reference.py::local_response_norm (a naive loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl.autograd import Function
from minidl.ops._checks import require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
# Tuned for speed (shifted adds; beta = 0.75 by square roots). The plain loop, to read first:
# tests/reference.py::local_response_norm
def channel_window_sum(a, size: int):
    """out[:, c] = sum of a[:, j] for |j - c| <= size // 2, clipped at the edges. a: (N, C, ...)."""
    out = a.copy()
    for d in range(1, size // 2 + 1):
        out[:, d:] += a[:, :-d]  # the neighbour d channels below
        out[:, :-d] += a[:, d:]  # the neighbour d channels above
    return out


def inverse_power(s, beta: float):
    """s ** -beta. For the paper's beta = 0.75 as 1 / (sqrt(s) * sqrt(sqrt(s))): the same to about
    an ulp and about three times faster than np.power, which dominated LRN's time."""
    if beta == 0.75:
        r = np.sqrt(s)
        r *= np.sqrt(r)
        return np.reciprocal(r, out=r)
    return s**-beta


def local_response_norm_forward_numpy(a, size, alpha, beta, k):
    """a: (N, C, H, W) -> b, and for backward s (the scale) and p = s^-beta, all (N, C, H, W)."""
    s = channel_window_sum(a * a, size)
    s *= alpha  # in place: s = k + alpha * window sum, without two more temporaries
    s += k
    p = inverse_power(s, beta)
    return a * p, s, p


def local_response_norm_backward_numpy(db, a, b, s, p, size, alpha, beta):
    ratio = db * b
    ratio /= s
    da = channel_window_sum(ratio, size)  # sum over the window of db * b / s
    da *= a
    da *= -2 * alpha * beta
    da += db * p
    return da


# ---- CUDA (kernels/lrn.cu) -----------------------------------------------------------------------
def local_response_norm_forward_cuda(a, size, alpha, beta, k):
    n, c = a.shape[:2]
    plane = a.size // max(n * c, 1)  # an empty batch (N = 0) launches no work
    xp = backend.xp("cuda")
    b = xp.empty_like(a)
    s = xp.empty(a.shape, dtype=dtypes.compute_dtype(a.dtype))  # float32 for 16-bit a (lrn.cu)
    cuda.launch_1d(
        "lrn",
        "lrn_forward",
        a.dtype,
        a.size,
        (a, b, s, cuda.i64(a.size), *cuda.i32(c, plane, size), *cuda.real(a.dtype, alpha, beta, k)),
    )
    return b, s


def local_response_norm_backward_cuda(db, a, b, s, size, alpha, beta):
    n, c = a.shape[:2]
    plane = a.size // max(n * c, 1)  # an empty batch (N = 0) launches no work
    da = backend.xp("cuda").empty_like(a)
    cuda.launch_1d(
        "lrn",
        "lrn_backward",
        a.dtype,
        a.size,
        (
            db,
            a,
            b,
            s,
            da,
            cuda.i64(a.size),
            *cuda.i32(c, plane, size),
            *cuda.real(a.dtype, alpha, beta),
        ),
    )
    return da


# ---- autograd ------------------------------------------------------------------------------------
class LocalResponseNormFunction(Function):
    dtype_kinds = "f"

    @staticmethod
    def forward(ctx, a, size, alpha, beta, k):
        # a: (N, C, H, W) -> b: (N, C, H, W)
        if ctx.device == "cuda":
            a = backend.xp("cuda").ascontiguousarray(a)
            b, s = local_response_norm_forward_cuda(a, size, alpha, beta, k)
            p = None  # the kernel recomputes s^-beta
        else:  # a 16-bit a in float32, as the kernel computes it (apply rounds b once)
            a = dtypes.to_compute(a)
            b, s, p = threads.over_batch(  # the batch in parts on the thread pool; s and p per part
                lambda a: local_response_norm_forward_numpy(a, size, alpha, beta, k),
                a,
                combine=("join", "list", "list"),
            )
        ctx.save(a, b, s, p, size, alpha, beta)
        return b

    @staticmethod
    def backward(ctx, db):
        a, b, s, p, size, alpha, beta = ctx.saved
        if ctx.device == "cuda":
            db = backend.xp("cuda").ascontiguousarray(db)
            return local_response_norm_backward_cuda(db, a, b, s, size, alpha, beta)
        db = db.astype(a.dtype, copy=False)  # float32 for a 16-bit input (see forward)
        return threads.over_batch(
            lambda db, a, b, s, p: local_response_norm_backward_numpy(
                db, a, b, s, p, size, alpha, beta
            ),
            *(db, a, b, s, p),
        )


def check_size(op: str, size) -> None:
    if not isinstance(size, int) or size < 1 or size % 2 == 0:
        raise ValueError(
            f"{op}: size must be a positive odd integer (a centred window), got {size!r}"
        )


def local_response_norm(
    x: Tensor, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0
) -> Tensor:
    """The paper's LRN over channels of x: (N, C, ...); alpha is not divided by size (see above)."""
    require_tensor("local_response_norm", "x", x)
    if x.ndim < 3:
        raise ValueError(
            f"local_response_norm: x must be (N, C, ...) with at least 3 dimensions, got {x.shape}"
        )
    check_size("local_response_norm", size)
    return LocalResponseNormFunction.apply(
        x, size=size, alpha=float(alpha), beta=float(beta), k=float(k)
    )
