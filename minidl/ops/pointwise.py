"""Element-wise math and the ``min`` reduction a PyTorch user reaches for (``abs``, ``sqrt``,
``sigmoid``, ``tanh``, ``clamp``, ``min``), one ``Function`` each, with its derivative in a
comment above it, as ``minidl/ops/tensor_ops.py`` writes them.

Plain array math through ``xp`` (NumPy or CuPy, picked by the device): one definition serves
both devices. ``minidl/tensor_api.py`` holds the Tensor methods that call them; the shape ops
(``cat``, ``stack``, ``expand``) are in ``minidl/ops/shape_ops.py``.
"""

from __future__ import annotations

import numpy as np

from minidl import backend
from minidl.autograd import Function
from minidl.ops.tensor_ops import Max


# y = |a|: dy/da = sign(a), and 0 at a = 0 (PyTorch's choice of subgradient there)
class Abs(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return backend.xp(ctx.device).abs(a)

    @staticmethod
    def backward(ctx, dy):
        (a,) = ctx.saved
        return dy * backend.xp(ctx.device).sign(a)


# y = sqrt(a): dy/da = 1 / (2 sqrt(a)) = 1 / (2 y); inf at a = 0, NaN for a < 0, as in PyTorch
class Sqrt(Function):
    @staticmethod
    def forward(ctx, a):
        with np.errstate(invalid="ignore"):  # sqrt of a negative number is NaN, as in PyTorch
            y = backend.xp(ctx.device).sqrt(a)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        with np.errstate(divide="ignore", invalid="ignore"):
            return dy / (2 * y)


# y = 1 / (1 + exp(-a)): dy/da = y (1 - y)
class Sigmoid(Function):
    @staticmethod
    def forward(ctx, a):
        xp = backend.xp(ctx.device)
        # exp of a negative number only, so no overflow: for a < 0, y = exp(a) / (1 + exp(a))
        e = xp.exp(-xp.abs(a))
        y = xp.where(a >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * y * (1 - y)


# y = tanh(a): dy/da = 1 - y^2
class Tanh(Function):
    @staticmethod
    def forward(ctx, a):
        y = backend.xp(ctx.device).tanh(a)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * (1 - y * y)


# y = min(max(a, low), high) (a bound of None is absent): dy/da = 1 where low <= a <= high,
# 0 elsewhere. At a bound itself the gradient passes, as PyTorch's clamp_backward does.
# With low > high every y is high (PyTorch's rule) and no gradient passes.
class Clamp(Function):
    @staticmethod
    def forward(ctx, a, low, high):
        xp = backend.xp(ctx.device)
        y = a
        if low is not None:
            y = xp.maximum(y, xp.asarray(low, dtype=a.dtype))
        if high is not None:
            y = xp.minimum(y, xp.asarray(high, dtype=a.dtype))
        ctx.save(a, low, high)
        return y if y is not a else a.copy()

    @staticmethod
    def backward(ctx, dy):
        a, low, high = ctx.saved
        xp = backend.xp(ctx.device)
        passes = xp.ones(a.shape, dtype=bool)
        if low is not None:
            passes &= a >= low
        if high is not None:
            passes &= a <= high
        return dy * passes


# y = min over axes of a: dy/da = 1 at the minimum, 0 elsewhere (ties share it): Max's op
# (minidl/ops/tensor_ops.py) taking the minimum
class Min(Max):
    extreme = "min"
