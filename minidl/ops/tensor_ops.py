"""The Tensor's own ops: element-wise math, reductions, shape ops and matmul, one ``Function``
each, with its derivative in a comment above ``backward``.

They are written with ``xp`` (NumPy or CuPy, picked by the device), so one definition serves both
devices: these are plain array math, not kernels of our own. The layers with CUDA kernels of our
own (conv, pool, LRN, dropout, ...) have a module each beside this one. ``minidl/tensor.py`` holds
the Tensor, whose operators (``+``, ``*``, ``@``, ``sum``, ``reshape``, ...) call these.

Every backward receives ``dy`` = d loss / d output and returns d loss / d input for each array
input, shaped like that input: where forward broadcast an input, ``unbroadcast`` sums the gradient
back down to the input's shape (``docs/autograd.md`` traces one expression through all of this).
"""

from __future__ import annotations

import numpy as np

from minidl import backend, dtypes
from minidl.autograd import Function
from minidl.indexing import torch_index


def unbroadcast(grad, shape: tuple[int, ...]):
    """Sum a broadcast gradient back down to ``shape`` (the input's shape)."""
    while grad.ndim > len(shape):
        grad = dtypes.sum(grad, axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = dtypes.sum(grad, axis=axis, keepdims=True)
    return grad


def _broadcast_shape(op: str, a, b) -> None:
    try:
        np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(
            f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be broadcast together"
        ) from None


# ---- element-wise ------------------------------------------------------------------------------
# y = a + b: dy/da = 1, dy/db = 1
class Add(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("add", a, b)
        ctx.save(a.shape, b.shape)
        return a + b

    @staticmethod
    def backward(ctx, dy):
        a_shape, b_shape = ctx.saved
        return unbroadcast(dy, a_shape), unbroadcast(dy, b_shape)


# y = a - b: dy/da = 1, dy/db = -1
class Sub(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("sub", a, b)
        ctx.save(a.shape, b.shape)
        return a - b

    @staticmethod
    def backward(ctx, dy):
        a_shape, b_shape = ctx.saved
        return unbroadcast(dy, a_shape), unbroadcast(-dy, b_shape)


# y = a * b: dy/da = b, dy/db = a
class Mul(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("mul", a, b)
        ctx.save(a, b)
        return a * b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return unbroadcast(dy * b, a.shape), unbroadcast(dy * a, b.shape)


# y = a / b: dy/da = 1 / b, dy/db = -a / b^2
class Div(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("div", a, b)
        ctx.save(a, b)
        return a / b

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        return unbroadcast(dy / b, a.shape), unbroadcast(-dy * a / (b * b), b.shape)


# y = -a: dy/da = -1
class Neg(Function):
    @staticmethod
    def forward(ctx, a):
        return -a

    @staticmethod
    def backward(ctx, dy):
        return -dy


# y = a copied into an array of its own (x.clone()): dy/da = 1
class Clone(Function):
    @staticmethod
    def forward(ctx, a):
        return a.copy()

    @staticmethod
    def backward(ctx, dy):
        return dy


# y = src, broadcast to dst's shape in dst's dtype (dst.copy_(src), dst.fill_(value)):
# dy/dsrc = 1 (summed over what broadcast); dst's old values are gone, so their gradient is 0
class CopyInto(Function):
    public_name = "copy_"

    @staticmethod
    def forward(ctx, dst, src):
        xp = backend.xp(ctx.device)
        ctx.save(np.shape(src), getattr(src, "dtype", None))
        try:
            return xp.broadcast_to(xp.asarray(src, dtype=dst.dtype), dst.shape).copy()
        except ValueError:
            raise RuntimeError(
                f"copy_: the source's shape {tuple(np.shape(src))} cannot be broadcast to the "
                f"tensor's {tuple(dst.shape)}"
            ) from None

    @staticmethod
    def backward(ctx, dy):
        shape, dtype = ctx.saved
        dsrc = unbroadcast(dy, shape).astype(dtype) if ctx.needs_input_grad[1] else None
        return backend.xp(ctx.device).zeros_like(dy), dsrc  # a number as src: no gradient


# y = a^b: dy/da = b a^(b-1), dy/db = a^b log a, with PyTorch's values at the singular points
# (pow_backward_self and pow_backward_exponent in its FunctionsManual.cpp):
#   dy/da = 0 where b == 0 (d(a^0)/da, even at a = 0 where b a^(b-1) would be 0 * inf = NaN);
#   dy/db = 0 where a == 0 and b >= 0 (the limit as b -> +0); -inf at a == 0, b < 0;
#   NaN for a < 0 (log a), as the real-valued derivative does not exist there.
class Pow(Function):
    @staticmethod
    def forward(ctx, a, b):
        _broadcast_shape("pow", a, b)
        with np.errstate(divide="ignore", invalid="ignore"):  # 0^-1 = inf, (-1)^0.5 = NaN
            y = a**b
        ctx.save(a, b, y)
        return y

    @staticmethod
    def backward(ctx, dy):
        a, b, y = ctx.saved
        xp = backend.xp(ctx.device)
        zero = xp.zeros((), dtype=dy.dtype)
        da = db = None
        with np.errstate(divide="ignore", invalid="ignore"):  # inf and NaN are the answers here
            if ctx.needs_input_grad[0]:
                da = unbroadcast(dy * xp.where(b == 0, zero, b * a ** (b - 1)), a.shape)
            if ctx.needs_input_grad[1]:
                singular = (a == 0) & (b >= 0)
                db = unbroadcast(dy * xp.where(singular, zero, y * xp.log(a)), b.shape)
        return da, db


# y = exp(a): dy/da = exp(a) = y
class Exp(Function):
    @staticmethod
    def forward(ctx, a):
        y = backend.xp(ctx.device).exp(a)
        ctx.save(y)
        return y

    @staticmethod
    def backward(ctx, dy):
        (y,) = ctx.saved
        return dy * y


# y = log(a): dy/da = 1 / a
class Log(Function):
    @staticmethod
    def forward(ctx, a):
        ctx.save(a)
        return backend.xp(ctx.device).log(a)

    @staticmethod
    def backward(ctx, dy):
        (a,) = ctx.saved
        return dy / a


# y = a in another dtype: the gradient goes back in a's dtype
class Cast(Function):
    keeps_16bit = False  # changing the dtype is what it is for

    @staticmethod
    def forward(ctx, a, dtype):
        ctx.save(a.dtype)
        return a.astype(dtype)

    @staticmethod
    def backward(ctx, dy):
        (dtype,) = ctx.saved
        return dy.astype(dtype)


# y = a on another device: the gradient goes back to a's device
class ToDevice(Function):
    @staticmethod
    def forward(ctx, a, device):
        ctx.save(ctx.device)
        ctx.device = device  # the output lives on the new device
        return backend.move(a, device)

    @staticmethod
    def backward(ctx, dy):
        (source,) = ctx.saved
        return backend.move(dy, source)

    @classmethod
    def apply(cls, a, device):
        # The output's device differs from the input's, so set it after the generic apply.
        out = super().apply(a, device=device)
        out.device = device
        return out


# ---- reductions --------------------------------------------------------------------------------
# y = sum over axes of a: dy/da = 1 for every summed element (dy broadcast back)
class Sum(Function):
    @staticmethod
    def forward(ctx, a, axis, keepdims):
        ctx.save(a.shape, axis, keepdims)
        return dtypes.sum(a, axis=axis, keepdims=keepdims)

    @staticmethod
    def backward(ctx, dy):
        shape, axis, keepdims = ctx.saved
        xp = backend.xp(ctx.device)
        if not keepdims and axis is not None:
            dy = xp.expand_dims(dy, axis)
        return xp.broadcast_to(dy, shape).copy()


# y = max over axes of a: dy/da = 1 at the maximum, 0 elsewhere (ties share it)
class Max(Function):
    extreme = "max"  # Min (minidl/ops/pointwise.py) is this op with "min"

    @classmethod
    def forward(cls, ctx, a, axis, keepdims):
        if a.size == 0 and (axis is None or any(a.shape[i] == 0 for i in axis)):
            what = f"{cls.extreme}: cannot reduce over a dimension of size 0"
            raise IndexError(f"{what} (no {cls.extreme}imum exists)")
        y = getattr(a, cls.extreme)(axis=axis, keepdims=True)
        ctx.save(a, y, axis, keepdims)
        return y if keepdims else (y.squeeze(axis) if axis is not None else y.reshape(()))

    @staticmethod
    def backward(ctx, dy):
        a, y, axis, keepdims = ctx.saved
        xp = backend.xp(ctx.device)
        if not keepdims:
            dy = xp.expand_dims(dy, axis) if axis is not None else dy.reshape(y.shape)
        # Ties share the gradient equally (NumPy's amax has no single "index" to prefer).
        hit = (a == y).astype(a.dtype)
        return hit * dy / hit.sum(axis=axis, keepdims=True)


# ---- shape -------------------------------------------------------------------------------------
# y = a viewed in another shape: the gradient is dy in a's shape
class Reshape(Function):
    @staticmethod
    def forward(ctx, a, shape):
        ctx.save(a.shape)
        try:
            return a.reshape(shape)
        except ValueError:
            raise ValueError(f"reshape: cannot view shape {tuple(a.shape)} as {shape}") from None

    @staticmethod
    def backward(ctx, dy):
        (shape,) = ctx.saved
        return dy.reshape(shape)


# y = a with axes reordered: the gradient is dy with the inverse order
class Permute(Function):
    @staticmethod
    def forward(ctx, a, dims):
        ctx.save(dims)
        return a.transpose(dims)

    @staticmethod
    def backward(ctx, dy):
        (dims,) = ctx.saved
        return dy.transpose(np.argsort(dims))


# y = a[index]: the gradient scatters dy back to the indexed places (zero elsewhere)
class GetItem(Function):
    @staticmethod
    def forward(ctx, a, index):
        basic, advanced = torch_index(index, a.ndim)
        ctx.save(a.shape, a.dtype, basic, advanced)
        return a[basic] if advanced is None else a[basic][advanced]

    @staticmethod
    def backward(ctx, dy):
        shape, dtype, basic, advanced = ctx.saved
        xp = backend.xp(ctx.device)
        dx = xp.zeros(shape, dtype=dtype)
        if advanced is None:
            xp.add.at(dx, basic, dy)  # add.at: repeated indices each get their share
        else:
            xp.add.at(dx[basic], advanced, dy)  # dx[basic] is a view: basic indices only
        return dx


# y = a with y[index] = v (``a[index] = v``, which Tensor.__setitem__ writes in place):
# dy/da = dy where a was kept, 0 where it was overwritten; dy/dv = dy at the written places
# (summed over what broadcast)
class SetItem(Function):
    public_name = "__setitem__"

    @staticmethod
    def forward(ctx, a, v, index):
        basic, advanced = torch_index(index, a.ndim)
        ctx.save(basic, advanced, np.shape(v), getattr(v, "dtype", None))
        y = a.copy()
        try:
            _write_at(y, basic, advanced, v)
        except (ValueError, IndexError) as err:
            raise type(err)(f"x[index] = value: {err}") from None
        return y

    @staticmethod
    def backward(ctx, dy):
        basic, advanced, v_shape, v_dtype = ctx.saved
        da = dy.copy()
        _write_at(da, basic, advanced, 0)
        if not ctx.needs_input_grad[1]:  # a number or an array as v: no gradient
            return da, None
        region = dy[basic] if advanced is None else dy[basic][advanced]
        return da, unbroadcast(region, v_shape).astype(v_dtype, copy=False)


def _write_at(array, basic, advanced, value) -> None:
    """array[index] = value for torch_index's (basic, advanced) split of the index."""
    if advanced is None:
        array[basic] = value
    else:
        array[basic][advanced] = value  # array[basic] is a view: basic indices only


# y = a @ b: dy/da = dy @ b^T, dy/db = a^T @ dy
class MatMul(Function):
    @staticmethod
    def forward(ctx, a, b):
        if a.ndim == 0 or b.ndim == 0:
            raise ValueError("matmul: both operands need at least one dimension")
        k_a = a.shape[-1]
        k_b = b.shape[-2] if b.ndim > 1 else b.shape[0]
        if k_a != k_b:
            raise ValueError(
                f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not match "
                f"(a's last dimension {k_a} must equal b's "
                f"{'second-last' if b.ndim > 1 else 'only'}"
                f" dimension {k_b})"
            )
        ctx.save(a, b)
        return dtypes.matmul(a, b)

    @staticmethod
    def backward(ctx, dy):
        a, b = ctx.saved
        xp = backend.xp(ctx.device)
        # Treat vectors as matrices (a row for a, a column for b), as matmul does.
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        # dy gets back the dims matmul removed: b's column (last) first, then a's row, so that
        # the dot product of two vectors (dy is 0-d) becomes (1, 1)
        dy2 = dy
        if b.ndim == 1:
            dy2 = xp.expand_dims(dy2, -1)
        if a.ndim == 1:
            dy2 = xp.expand_dims(dy2, -2)
        da = dtypes.matmul(dy2, xp.swapaxes(b2, -1, -2))
        db = dtypes.matmul(xp.swapaxes(a2, -1, -2), dy2)
        da = unbroadcast(da, a2.shape).reshape(a.shape)
        db = unbroadcast(db, b2.shape).reshape(b.shape)
        return da, db
