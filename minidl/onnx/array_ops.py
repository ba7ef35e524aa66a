"""A data-movement op the ONNX importer needs and the engine does not have: constant padding.
Like ``minidl/ops/tensor_ops.py`` it is plain array math written with ``xp`` (NumPy or CuPy,
picked by the device), one ``Function``, so autograd runs through it on either device (and on the
kernel emulator, whose arrays are NumPy's).

- ``pad``: an asymmetric or -inf padding that ``conv2d`` and ``max_pool2d`` do not take
  (ONNX pads may differ before and after an axis: Caffe's AlexNet pads pool5 only at the end).

(ONNX's Concat is the engine's ``minidl.cat``.)
"""

from __future__ import annotations

from minidl import backend
from minidl.autograd import Function
from minidl.tensor import Tensor


# y = x surrounded by ``value``: the gradient is the part of dy where x sits
class PadFunction(Function):
    public_name = "pad"

    @staticmethod
    def forward(ctx, x, pads, value):
        # x: (d_0, d_1, ...) -> y: (d_0 + before_0 + after_0, ...); pads: ((before, after), ...)
        xp = backend.xp(ctx.device)
        shape = tuple(d + b + a for d, (b, a) in zip(x.shape, pads))
        inside = tuple(slice(b, b + d) for d, (b, _) in zip(x.shape, pads))
        y = xp.full(shape, value, dtype=x.dtype)
        y[inside] = x
        ctx.save(inside)
        return y

    @staticmethod
    def backward(ctx, dy):
        (inside,) = ctx.saved
        return dy[inside]


def pad(x: Tensor, pads: list[tuple[int, int]], value: float = 0.0) -> Tensor:
    """x with ``pads[d] = (before, after)`` cells of ``value`` around each axis d (a shorter list
    pads the last axes, so ``[(top, bottom), (left, right)]`` pads an image's H and W)."""
    if len(pads) > x.ndim:
        raise ValueError(f"pad: {len(pads)} (before, after) pairs for a {x.ndim}-d tensor")
    if any(b < 0 or a < 0 for b, a in pads):
        raise ValueError(f"pad: paddings must be >= 0, got {pads}")
    full = [(0, 0)] * (x.ndim - len(pads)) + [(int(b), int(a)) for b, a in pads]
    return PadFunction.apply(x, pads=tuple(full), value=value)
