"""Fully connected layer: y = x @ w^T + b (PyTorch's layout, w: (out, in)).

    dx = dy @ w,   dw = dy^T @ x,   db = sum_n dy[n]

A plain GEMM: BLAS through NumPy on the CPU, cuBLAS through CuPy on the GPU.
No page (no kernel of our own). Plain definition: tests/reference.py::linear (a naive loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from minidl import backend, dtypes
from minidl.autograd import Function
from minidl.ops._checks import require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


class LinearFunction(Function):
    dtype_kinds = "f"  # PyTorch refuses integer tensors here too

    @staticmethod
    def forward(ctx, x, w, b):
        # x: (N, in) or (N, ..., in), w: (out, in), b: (out,) -> y: (N, out) or (N, ..., out)
        y = dtypes.matmul(x, w.T)
        if b is not None:
            y += b
        ctx.save(x, w, b is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, w, has_bias = ctx.saved
        xp = backend.xp(ctx.device)
        rows_x = x.reshape(-1, x.shape[-1])  # every leading dimension is a batch dimension
        rows_dy = dy.reshape(-1, dy.shape[-1])
        dx = dtypes.matmul(dy, w) if ctx.needs_input_grad[0] else None
        dw = dtypes.matmul(rows_dy.T, rows_x) if ctx.needs_input_grad[1] else None
        db = dtypes.sum(rows_dy, axis=0) if has_bias and ctx.needs_input_grad[2] else None
        if dw is not None:
            dw = xp.ascontiguousarray(dw)
        return dx, dw, db


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """y = x @ weight^T + bias. x: (N, in) or (N, ..., in), weight: (out, in), bias: (out,)."""
    require_tensor("linear", "x", x)
    if x.ndim < 1:
        raise ValueError("linear: x must have a last dimension of in_features, got a scalar")
    require_tensor("linear", "weight", weight, ndim=2, layout="(out_features, in_features)")
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: x has {x.shape[-1]} features but weight expects {weight.shape[1]} "
            f"(x: {x.shape}, weight: {weight.shape})"
        )
    if bias is not None:
        require_tensor("linear", "bias", bias, ndim=1, layout="(out_features,)")
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"linear: bias has shape {bias.shape}, expected ({weight.shape[0]},)")
    return LinearFunction.apply(x, weight, bias)
