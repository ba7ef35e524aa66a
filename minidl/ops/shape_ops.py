"""Shape ops that join or widen tensors: ``cat``, ``stack`` and ``expand``, one ``Function``
each, with its derivative in a comment above it, as ``minidl/ops/tensor_ops.py`` writes them.

Plain array math through ``xp`` (NumPy or CuPy, picked by the device). The argument checks
(an empty list, shapes that do not fit, tensors on two devices) are in ``minidl/tensor_api.py``,
which calls these; here every input is known to fit.
"""

from __future__ import annotations

import numpy as np

from minidl import backend
from minidl.autograd import Function
from minidl.ops.tensor_ops import unbroadcast


# y = [a_0, a_1, ...] joined along dim: dy/da_i = dy's slice of a_i's place along dim
class Cat(Function):
    @staticmethod
    def forward(ctx, *arrays, dim):
        sizes = [a.shape[dim] for a in arrays]
        ctx.save(dim, sizes)
        return backend.xp(ctx.device).concatenate(arrays, axis=dim)

    @staticmethod
    def backward(ctx, dy):
        dim, sizes = ctx.saved
        ends = np.cumsum(sizes)[:-1].tolist()
        return tuple(part.copy() for part in backend.xp(ctx.device).split(dy, ends, axis=dim))


# y = [a_0, a_1, ...] stacked along a new dim: dy/da_i = dy[..., i, ...] (index i along dim)
class Stack(Function):
    @staticmethod
    def forward(ctx, *arrays, dim):
        ctx.save(dim, len(arrays))
        return backend.xp(ctx.device).stack(arrays, axis=dim)

    @staticmethod
    def backward(ctx, dy):
        dim, count = ctx.saved
        xp = backend.xp(ctx.device)
        return tuple(xp.take(dy, i, axis=dim) for i in range(count))


# y = a broadcast to shape (a view, as PyTorch's expand): dy/da = dy summed over every dim
# that was added or widened from size 1 (unbroadcast)
class Expand(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save(a.shape)
        return backend.xp(ctx.device).broadcast_to(a, shape)

    @staticmethod
    def backward(ctx, dy):
        (shape,) = ctx.saved
        return unbroadcast(dy, shape)
