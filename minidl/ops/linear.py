"""Fully connected layer: y = x @ w^T + b (PyTorch's layout, w: (out, in)).

    dx = dy @ w,   dw = dy^T @ x,   db = sum_n dy[n]

A plain GEMM: BLAS through NumPy on the CPU, cuBLAS through CuPy on the GPU. On the CPU each
product is cut into parts along a dimension it does not sum over (y's and dw's rows of w, dx's
columns of w), one BLAS call a part on the thread pool (minidl/threads.py): the same sums.
No page (no kernel of our own). Plain definition: tests/reference.py::linear (a naive loop).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, dtypes, threads
from minidl.autograd import Function
from minidl.ops._checks import require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


def in_parts(operands, out, size: int, nbytes: int, rows: bool = False):
    """The CPU's GEMMs, on the thread pool: out[..., s] (out[s] with ``rows``) = a @ b with
    (a, b) = operands(s), for the parts s of range(size) (they depend on the sizes only), each
    written in place (a 16-bit product goes through dtypes.matmul: float32, rounded once)."""

    def part(s: slice) -> None:
        a, b = operands(s)
        into = out[s if rows else (..., s)]
        if dtypes.is_16bit(a.dtype):
            into[...] = dtypes.matmul(a, b)
        else:
            np.matmul(a, b, out=into)

    threads.map_parts(part, threads.parts(size, nbytes))
    return out


class LinearFunction(Function):
    dtype_kinds = "f"  # PyTorch refuses integer tensors here too

    @staticmethod
    def forward(ctx, x, w, b):
        # x: (N, in) or (N, ..., in), w: (out, in), b: (out,) -> y: (N, out) or (N, ..., out)
        if ctx.device == "cuda":
            y = dtypes.matmul(x, w.T)
        else:  # y's columns o: x @ w[o]^T
            y = np.empty((*x.shape[:-1], w.shape[0]), np.result_type(x, w))
            y = in_parts(lambda o: (x, w[o].T), y, w.shape[0], w.nbytes)
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
        needs = ctx.needs_input_grad
        if ctx.device == "cuda":
            dx = dtypes.matmul(dy, w) if needs[0] else None
            dw = dtypes.matmul(rows_dy.T, rows_x) if needs[1] else None
        else:  # dx's columns i: dy @ w[:, i]; dw's rows o: dy[:, o]^T @ x
            dtype = np.result_type(dy, w, x)
            dx = dw = None
            if needs[0]:
                dx = np.empty((*dy.shape[:-1], w.shape[1]), dtype)
                dx = in_parts(lambda i: (dy, w[:, i]), dx, w.shape[1], w.nbytes)
            if needs[1]:
                dw = np.empty(w.shape, dtype)
                dw = in_parts(lambda o: (rows_dy[:, o].T, rows_x), dw, w.shape[0], w.nbytes, True)
        db = dtypes.sum(rows_dy, axis=0) if has_bias and needs[2] else None
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
