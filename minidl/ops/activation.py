"""ReLU, the paper's non-linearity (section 3.1): y = max(x, 0), dx = dy * [y > 0].

The GPU path is ``kernels/activation.cu`` (one thread per element).
"""

from __future__ import annotations

import numpy as np

from minidl import backend, cuda
from minidl.autograd import Function
from minidl.ops._checks import require_tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def relu_forward_numpy(x):
    return np.maximum(x, x.dtype.type(0))


def relu_backward_numpy(dy, y):
    return dy * (y > 0)


# ---- CUDA (kernels/activation.cu) ----------------------------------------------------------------
def relu_forward_cuda(x):
    y = backend.xp("cuda").empty_like(x)
    cuda.launch(
        "activation",
        "relu_forward",
        x.dtype,
        cuda.grid_for(x.size),
        (cuda.THREADS,),
        (x, y, cuda.i64(x.size)),
    )
    return y


def relu_backward_cuda(dy, y):
    dx = backend.xp("cuda").empty_like(dy)
    cuda.launch(
        "activation",
        "relu_backward",
        dy.dtype,
        cuda.grid_for(dy.size),
        (cuda.THREADS,),
        (dy, y, dx, cuda.i64(dy.size)),
    )
    return dx


# ---- autograd ------------------------------------------------------------------------------------
class ReLU(Function):
    @staticmethod
    def forward(ctx, x):
        if ctx.device == "cuda":
            y = relu_forward_cuda(backend.xp("cuda").ascontiguousarray(x))
        else:
            y = relu_forward_numpy(x)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        if ctx.device == "cuda":
            return relu_backward_cuda(backend.xp("cuda").ascontiguousarray(dy), y)
        return relu_backward_numpy(dy, y)


def relu(x):
    """max(x, 0), element-wise."""
    require_tensor("relu", "x", x)
    return ReLU.apply(x)
