"""Two data-movement ops the ONNX importer needs and the engine does not have: concatenation and
constant padding. Like ``minidl/ops/tensor_ops.py`` they are plain array math written with ``xp``
(NumPy or CuPy, picked by the device), one ``Function`` each, so autograd runs through them on
either device (and on the kernel emulator, whose arrays are NumPy's).

- ``concat``: ONNX's Concat (and the two towers of a grouped layer put side by side).
- ``pad``: an asymmetric or -inf padding that ``conv2d`` and ``max_pool2d`` do not take
  (ONNX pads may differ before and after an axis: Caffe's AlexNet pads pool5 only at the end).
"""

from __future__ import annotations

from minidl import backend
from minidl.autograd import Function
from minidl.tensor import Tensor


# y = [a_0, a_1, ...] along ``axis``: each input's gradient is its slice of dy
class ConcatFunction(Function):
    public_name = "concat"

    @staticmethod
    def forward(ctx, *arrays, axis):
        # arrays: shapes equal except along axis -> y: their sizes along axis summed
        ctx.save(axis, [a.shape[axis] for a in arrays])
        return backend.xp(ctx.device).concatenate(arrays, axis=axis)

    @staticmethod
    def backward(ctx, dy):
        axis, sizes = ctx.saved
        grads, start = [], 0
        for size in sizes:
            index = [slice(None)] * dy.ndim
            index[axis] = slice(start, start + size)
            grads.append(dy[tuple(index)])
            start += size
        return tuple(grads)


def concat(tensors: list[Tensor], axis: int) -> Tensor:
    """Join tensors along ``axis`` (negative counts from the end), as ``torch.cat``."""
    if not tensors:
        raise ValueError("concat: needs at least one tensor")
    ndim = tensors[0].ndim
    if not -ndim <= axis < ndim:
        raise ValueError(f"concat: axis {axis} is out of range for {ndim}-d tensors")
    axis %= ndim
    for t in tensors[1:]:
        same = t.ndim == ndim and all(
            t.shape[d] == tensors[0].shape[d] for d in range(ndim) if d != axis
        )
        if not same:
            shapes = [tuple(t.shape) for t in tensors]
            raise ValueError(f"concat: shapes {shapes} differ outside axis {axis}")
    return ConcatFunction.apply(*tensors, axis=axis)


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
