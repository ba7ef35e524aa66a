"""ReLU, the paper's non-linearity (section 3.1): y = max(x, 0), dx = dy * [y > 0]; and the
fused bias + ReLU that follows a convolution or a linear layer:

    y[n, c, ...] = max(x[n, c, ...] + b[c], 0)
    dx = dy * [y > 0],    db[c] = sum over n and the pixels of dx[n, c, ...]

Fusing saves one pass over the activation: ``bias_relu(conv2d(x, w), b)`` equals
``relu(conv2d(x, w, b))``. The GPU path is ``kernels/activation.cu`` (one thread per element;
db is ``kernels/reduce.cu``'s per-channel block reduction).
Page: docs/activation.md. Plain definitions: tests/reference.py::relu and ::bias_relu.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl.autograd import Function
from minidl.ops._checks import require_tensor
from minidl.ops.reduce import channel_sum_cuda

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
# ``out``: where to write the result (the thread pool's part of a whole batch), or None.
def relu_forward_numpy(x, out=None):
    return np.maximum(x, x.dtype.type(0), out=out)


def relu_backward_numpy(dy, y, out=None):
    return np.multiply(dy, y > 0, out=out)


def bias_relu_forward_numpy(x, b, out=None):
    """x: (N, C, ...), b: (C,) -> y: (N, C, ...)."""
    y = np.add(x, b.reshape((1, -1) + (1,) * (x.ndim - 2)), out=out)
    return np.maximum(y, x.dtype.type(0), out=y)


def bias_relu_backward_numpy(dy, y):
    dx = dy * (y > 0)
    return dx, dtypes.sum(dx, axis=(0, *range(2, dx.ndim)))


# ---- CUDA (kernels/activation.cu) ----------------------------------------------------------------
def relu_forward_cuda(x):
    y = backend.xp("cuda").empty_like(x)
    cuda.launch_1d(
        "activation",
        "relu_forward",
        x.dtype,
        x.size,
        (x, y, cuda.i64(x.size)),
    )
    return y


def relu_backward_cuda(dy, y):
    dx = backend.xp("cuda").empty_like(dy)
    cuda.launch_1d(
        "activation",
        "relu_backward",
        dy.dtype,
        dy.size,
        (dy, y, dx, cuda.i64(dy.size)),
    )
    return dx


def bias_relu_forward_cuda(x, b):
    n, c = x.shape[:2]
    y = backend.xp("cuda").empty_like(x)
    cuda.launch_1d(
        "activation",
        "bias_relu_forward",
        x.dtype,
        x.size,
        (x, b, y, cuda.i64(x.size), *cuda.i32(c, x.size // max(n * c, 1))),  # N may be 0
    )
    return y


def bias_relu_backward_cuda(dy, y):
    dx = relu_backward_cuda(dy, y)
    return dx, channel_sum_cuda(dx)


# ---- autograd ------------------------------------------------------------------------------------
class ReLUFunction(Function):
    @staticmethod
    def forward(ctx, x):
        if ctx.device == "cuda":
            # ascontiguousarray makes a 0-d array (1,): give y x's shape back
            y = relu_forward_cuda(backend.xp("cuda").ascontiguousarray(x)).reshape(x.shape)
        else:  # the batch in parts on the thread pool (minidl/threads.py)
            y = threads.over_batch(relu_forward_numpy, x, out=np.empty_like(x))
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        if ctx.device == "cuda":
            dx = relu_backward_cuda(backend.xp("cuda").ascontiguousarray(dy), y)
            return dx.reshape(dy.shape)
        return threads.over_batch(relu_backward_numpy, dy, y, out=np.empty_like(dy))


def relu(x: Tensor, inplace: bool = False) -> Tensor:
    """max(x, 0), element-wise. ``inplace``: written into x's own array and x returned, as
    PyTorch's (the result is made first, so it saves no memory here; minidl/inplace.py)."""
    require_tensor("relu", "x", x)
    if inplace:
        return x._in_place(ReLUFunction.apply)
    return ReLUFunction.apply(x)


class BiasReLUFunction(Function):
    @staticmethod
    def forward(ctx, x, b):
        # x: (N, C, ...), b: (C,) -> y: (N, C, ...)
        if ctx.device == "cuda":
            y = bias_relu_forward_cuda(backend.xp("cuda").ascontiguousarray(x), b)
        else:
            y = threads.over_batch(
                lambda x, out: bias_relu_forward_numpy(x, b, out), x, out=np.empty_like(x)
            )
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        if ctx.device == "cuda":
            return bias_relu_backward_cuda(backend.xp("cuda").ascontiguousarray(dy), y)
        # db summed over the parts in part order: the same bits for any thread count
        return threads.over_batch(bias_relu_backward_numpy, dy, y, combine=("join", "sum"))


def bias_relu(x: Tensor, bias: Tensor) -> Tensor:
    """max(x + bias[c], 0) in one pass, for x: (N, C, ...) and bias: (C,)."""
    require_tensor("bias_relu", "x", x)
    require_tensor("bias_relu", "bias", bias, ndim=1, layout="(C,)")
    channels = x.shape[1] if x.ndim > 1 else None
    if bias.shape[0] != channels:
        raise ValueError(
            f"bias_relu: bias has shape {bias.shape}, expected ({channels},) for x of shape "
            f"{x.shape} (one bias per channel, dimension 1)"
        )
    return BiasReLUFunction.apply(x, bias)
