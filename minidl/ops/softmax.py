"""Softmax and log-softmax along one dimension: plain array math on both devices (no kernel of
their own; the loss's fused kernel is kernels/loss.cu, minidl/ops/loss.py).

    log_softmax(z) = z - lse(z),   lse(z) = m + log sum_k exp(z_k - m),   m = max_k z_k
    softmax(z)     = exp(z - m) / sum_k exp(z_k - m)

Subtracting the maximum keeps every exp() at most 1, so logits of 1e4 are fine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minidl import backend, dtypes
from minidl.autograd import Function
from minidl.indexing import dim_index
from minidl.ops._checks import require_tensor
from minidl.ops.loss import logsumexp_rows

if TYPE_CHECKING:
    from minidl.tensor import Tensor


class LogSoftmaxFunction(Function):
    dtype_kinds = "f"

    @staticmethod
    def forward(ctx, z, dim):
        xp = backend.xp(ctx.device)
        z = dtypes.to_compute(z)  # 16-bit: in float32, as PyTorch (apply rounds y once)
        z = xp.moveaxis(z, dim, -1)
        y = z - logsumexp_rows(xp, z)[..., None]
        y = xp.moveaxis(y, -1, dim)
        ctx.save(y, dim)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, dim = ctx.saved
        xp = backend.xp(ctx.device)
        # y = z - lse(z): dz = dy - softmax(z) * sum(dy); y is float32 for 16-bit z
        dy = dy.astype(y.dtype, copy=False)
        return dy - xp.exp(y) * dy.sum(axis=dim, keepdims=True)


class SoftmaxFunction(Function):
    dtype_kinds = "f"

    @staticmethod
    def forward(ctx, z, dim):
        xp = backend.xp(ctx.device)
        z = dtypes.to_compute(z)  # 16-bit: in float32, as PyTorch (apply rounds y once)
        e = xp.exp(z - z.max(axis=dim, keepdims=True))
        y = e / e.sum(axis=dim, keepdims=True)
        ctx.save(y, dim)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, dim = ctx.saved
        # dz = y * (dy - sum(dy * y)); y is float32 for 16-bit z
        dy = dy.astype(y.dtype, copy=False)
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
