"""Softmax, log-softmax and the softmax cross-entropy loss, all computed from logits.

    lse[n]  = m[n] + log sum_k exp(z[n, k] - m[n]),    m[n] = max_k z[n, k]   (log-sum-exp)
    loss    = mean_n (lse[n] - z[n, t[n]])  (computed as (m - z_t) + log sum, exact for huge logits)
    dz[n,k] = (exp(z[n, k] - lse[n]) - [k == t[n]]) * dloss / N

Subtracting the row maximum keeps every exp() at most 1, so logits of 1e4 are fine. The GPU path
of the loss is ``kernels/loss.cu`` (one block per row: shared-memory reductions for the max and
the sum); softmax and log_softmax are plain array math on both devices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda
from minidl.autograd import Function
from minidl.ops._checks import require_tensor
from minidl.ops.tensor_ops import dim_index

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def logsumexp_rows(xp, z):
    m = z.max(axis=-1, keepdims=True)
    return (m + xp.log(xp.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def cross_entropy_forward_numpy(z, t):
    """z: (N, K), t: (N,) int -> per-row losses (N,), lse (N,)."""
    m = z.max(axis=1)
    log_sum = np.log(np.exp(z - m[:, None]).sum(axis=1))
    # (m - z_t) + log_sum rather than lse - z_t: with logits of 1e4, lse rounds in float32 and the
    # subtraction would lose the small loss; m - z_t is exact.
    losses = (m - z[np.arange(z.shape[0]), t]) + log_sum
    return losses, m + log_sum


def cross_entropy_backward_numpy(dloss, z, t, lse):
    n = z.shape[0]
    dz = np.exp(z - lse[:, None])
    dz[np.arange(n), t] -= 1
    return dz * (dloss / n)


# ---- CUDA (kernels/loss.cu) ----------------------------------------------------------------------
def cross_entropy_forward_cuda(z, t):
    n, k = z.shape
    xp = backend.xp("cuda")
    losses = xp.empty((n,), dtype=z.dtype)
    lse = xp.empty((n,), dtype=z.dtype)
    cuda.launch(
        "loss",
        "cross_entropy_forward",
        z.dtype,
        (n,),
        (cuda.REDUCE_THREADS,),
        (z, t, losses, lse, *cuda.i32(n, k)),
    )
    return losses, lse


def cross_entropy_backward_cuda(dloss, z, t, lse):
    n, k = z.shape
    dz = backend.xp("cuda").empty_like(z)
    cuda.launch(
        "loss",
        "cross_entropy_backward",
        z.dtype,
        cuda.grid_for(z.size),
        (cuda.THREADS,),
        (z, t, lse, dz, cuda.i64(z.size), cuda.i32(k), *cuda.real(z.dtype, float(dloss) / n)),
    )
    return dz


# ---- autograd ------------------------------------------------------------------------------------
class CrossEntropyFunction(Function):
    @staticmethod
    def forward(ctx, z, t):
        # z: (N, K) logits, t: (N,) int32 class indices -> scalar mean loss
        if ctx.device == "cuda":
            z = backend.xp("cuda").ascontiguousarray(z)
            losses, lse = cross_entropy_forward_cuda(z, t)
        else:
            losses, lse = cross_entropy_forward_numpy(z, t)
        ctx.save(z, t, lse)
        return losses.mean()

    @staticmethod
    def backward(ctx, dloss):
        z, t, lse = ctx.saved
        if ctx.device == "cuda":
            return cross_entropy_backward_cuda(dloss, z, t, lse), None
        return cross_entropy_backward_numpy(dloss, z, t, lse), None


def cross_entropy(logits: Tensor, target) -> Tensor:
    """Mean softmax cross-entropy. logits: (N, K) float; target: (N,) integer classes in [0, K)."""
    from minidl.tensor import Tensor

    require_tensor("cross_entropy", "logits", logits, ndim=2, layout="(N, classes)")
    t = target.data if isinstance(target, Tensor) else target
    t = backend.to_numpy(t) if not isinstance(t, (list, tuple)) else np.asarray(t)
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class indices, got dtype {t.dtype}"
        )
    n, k = logits.shape
    if t.shape != (n,):
        raise ValueError(f"cross_entropy: target has shape {t.shape}, expected ({n},)")
    if t.size and (t.min() < 0 or t.max() >= k):
        raise ValueError(
            f"cross_entropy: target values must lie in [0, {k}), got min {t.min()}, max {t.max()}"
        )
    t = backend.move(t.astype(np.int32), logits.device)
    return CrossEntropyFunction.apply(logits, t)


class LogSoftmaxFunction(Function):
    dtype_kinds = "f"

    @staticmethod
    def forward(ctx, z, dim):
        xp = backend.xp(ctx.device)
        z = xp.moveaxis(z, dim, -1)
        y = z - logsumexp_rows(xp, z)[..., None]
        y = xp.moveaxis(y, -1, dim)
        ctx.save(y, dim)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, dim = ctx.saved
        xp = backend.xp(ctx.device)
        # y = z - lse(z): dz = dy - softmax(z) * sum(dy)
        return dy - xp.exp(y) * dy.sum(axis=dim, keepdims=True)


class SoftmaxFunction(Function):
    dtype_kinds = "f"

    @staticmethod
    def forward(ctx, z, dim):
        xp = backend.xp(ctx.device)
        e = xp.exp(z - z.max(axis=dim, keepdims=True))
        y = e / e.sum(axis=dim, keepdims=True)
        ctx.save(y, dim)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, dim = ctx.saved
        # dz = y * (dy - sum(dy * y))
        return y * (dy - (dy * y).sum(axis=dim, keepdims=True))


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    require_tensor("log_softmax", "x", x)
    if x.ndim == 0:  # a 0-d tensor takes dim 0 or -1 (PyTorch): one class, log-probability 0
        dim_index(dim, 0)
        return log_softmax(x.reshape(1)).reshape(())
    return LogSoftmaxFunction.apply(x, dim=dim_index(dim, x.ndim))


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    require_tensor("softmax", "x", x)
    if x.ndim == 0:  # a 0-d tensor takes dim 0 or -1 (PyTorch): one class, probability 1
        dim_index(dim, 0)
        return softmax(x.reshape(1)).reshape(())
    return SoftmaxFunction.apply(x, dim=dim_index(dim, x.ndim))
