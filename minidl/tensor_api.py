"""The Tensor methods a PyTorch user reaches for in the first week (mixed into Tensor), and the
``cat`` / ``stack`` functions that ``minidl/__init__.py`` exports.

- element-wise: ``abs``, ``sqrt``, ``sigmoid``, ``tanh``, ``clamp(min, max)``
  (``minidl/ops/pointwise.py``); ``eq``, ``ne``, ``lt``, ``le``, ``gt``, ``ge`` (the operators);
- reductions: ``min(dim, keepdim)`` (values only, ties share the gradient, as ``max``),
  ``var`` and ``std`` (unbiased by default), ``softmax(dim)`` and ``log_softmax(dim)``;
- shape: ``t()``, ``unsqueeze``, ``squeeze``, ``expand`` (``minidl/ops/shape_ops.py``);
- joining: ``cat(tensors, dim)`` and ``stack(tensors, dim)``, their arguments checked here.

Each has PyTorch's names, defaults and output dtype (``docs/tensor_api.md`` has the table).
``var`` and ``std`` are written with Tensor ops, so autograd derives their backward;
``softmax`` and ``log_softmax`` are ``minidl/ops/softmax.py``'s (``F.softmax``).
"""

from __future__ import annotations

import numbers

import numpy as np

from minidl import dtypes, promotion
from minidl.autograd import GraphTensor
from minidl.indexing import dim_index, dim_tuple
from minidl.ops.pointwise import Abs, Clamp, Min, Sigmoid, Sqrt, Tanh
from minidl.ops.shape_ops import Cat, Expand, Stack
from minidl.ops.softmax import log_softmax, softmax


class TorchMethods:
    """PyTorch's everyday Tensor methods (see the module docstring); mixed into Tensor."""

    # ---- element-wise ------------------------------------------------------------------------
    def abs(self):
        return Abs.apply(self)

    def sqrt(self):
        return Sqrt.apply(self._floating())  # an integer tensor's sqrt is float32, as in PyTorch

    def sigmoid(self):
        return Sigmoid.apply(self._floating())

    def tanh(self):
        return Tanh.apply(self._floating())

    def clamp(self, min=None, max=None):  # noqa: A002 - PyTorch's argument names
        """Values below min become min, above max become max; the gradient passes where
        min <= x <= max (bounds included), as in PyTorch. With min > max every value is max."""
        if min is None and max is None:
            raise RuntimeError("clamp: At least one of 'min' or 'max' must not be None")
        for name, bound in (("min", min), ("max", max)):
            if bound is not None and not isinstance(bound, numbers.Real):
                raise TypeError(
                    f"clamp: {name} must be a Python number, got {type(bound).__name__}"
                )
        x = self
        if any(isinstance(b, float) for b in (min, max)) and dtypes.kind(self.dtype) != "f":
            x = self._floating()  # int tensor clamped to 0.5 is float32, as in PyTorch
        return Clamp.apply(x, low=min, high=max)

    def eq(self, other):
        return self == other

    def ne(self, other):
        return self != other

    def lt(self, other):
        return self < other

    def le(self, other):
        return self <= other

    def gt(self, other):
        return self > other

    def ge(self, other):
        return self >= other

    # ---- reductions --------------------------------------------------------------------------
    def min(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """The minimum values (ties share the gradient); unlike torch.min(dim), no indices."""
        axis = dim if dim is not None else axis
        keepdims = keepdim if keepdim is not None else keepdims
        return Min.apply(self, axis=dim_tuple(axis, self.ndim), keepdims=keepdims)

    def var(self, dim=None, unbiased: bool = True, keepdim: bool = False, *, correction=None):
        """sum((x - mean)^2) / (N - correction); correction is 1 (unbiased) unless told, as in
        PyTorch. N - correction <= 0 gives inf (or NaN for 0 / 0), as PyTorch's does."""
        if correction is None:
            correction = 1 if unbiased else 0
        axes = dim_tuple(dim, self.ndim)
        count = self.numel() if axes is None else int(np.prod([self.shape[a] for a in axes]))
        deviation = self - self.mean(dim=axes if axes else None, keepdim=True)
        squares = (deviation * deviation).sum(dim=axes if axes else None, keepdim=keepdim)
        divisor = count - correction
        with np.errstate(invalid="ignore"):  # 0 * inf = NaN, PyTorch's answer for 0 / 0
            return squares * (1.0 / divisor if divisor > 0 else float("inf"))

    def std(self, dim=None, unbiased: bool = True, keepdim: bool = False, *, correction=None):
        """sqrt(var(...)): unbiased unless told, as in PyTorch."""
        return self.var(dim, unbiased, keepdim, correction=correction).sqrt()

    def log_softmax(self, dim: int):
        return log_softmax(self, dim)

    def softmax(self, dim: int):
        return softmax(self, dim)

    # ---- shape -------------------------------------------------------------------------------
    def t(self):
        """The transpose of a 2-D tensor; a 0-d or 1-D tensor as it is, as in PyTorch."""
        if self.ndim > 2:
            raise RuntimeError(
                f"t() expects a tensor with <= 2 dimensions, but self is {self.ndim}D "
                "(use transpose(dim0, dim1) or permute)"
            )
        return self.transpose(0, 1) if self.ndim == 2 else self.reshape(self.shape)

    def unsqueeze(self, dim: int):
        """A dim of size 1 inserted at dim, in [-ndim - 1, ndim]."""
        position = dim_index(dim, self.ndim + 1)
        return self.reshape(self.shape[:position] + (1,) + self.shape[position:])

    def squeeze(self, dim=None):
        """Dims of size 1 removed: every one, or those of ``dim`` (an int or a tuple); a named
        dim whose size is not 1 stays, as in PyTorch."""
        axes = range(self.ndim) if dim is None else (dim_tuple(dim, self.ndim) or ())
        return self.reshape(
            tuple(n for i, n in enumerate(self.shape) if not (i in axes and n == 1))
        )

    def expand(self, *sizes):
        """A view of self broadcast to sizes (-1 keeps a dim's size; new dims go in front)."""
        if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
            sizes = tuple(sizes[0])
        return Expand.apply(self, shape=expanded_shape(self.shape, tuple(sizes)))


def expanded_shape(shape: tuple[int, ...], sizes: tuple[int, ...]) -> tuple[int, ...]:
    """expand's target shape, with PyTorch's errors: -1 only for an existing dim; an existing
    dim keeps its size unless that size is 1."""
    if len(sizes) < len(shape):
        raise RuntimeError(
            f"expand: the number of sizes provided ({len(sizes)}) must be greater or equal to "
            f"the number of dimensions in the tensor ({len(shape)})"
        )
    new = len(sizes) - len(shape)
    out = []
    for i, size in enumerate(sizes):
        old = shape[i - new] if i >= new else None
        if size == -1 and old is None:
            raise RuntimeError(
                f"expand: the expanded size of the tensor (-1) isn't allowed in a leading, "
                f"non-existing dimension {i}"
            )
        size = old if size == -1 else size
        if old is not None and old != 1 and size != old:
            raise RuntimeError(
                f"expand: the expanded size of the tensor ({size}) must match the existing size "
                f"({old}) at non-singleton dimension {i}. Target sizes: {list(sizes)}. "
                f"Tensor sizes: {list(shape)}"
            )
        out.append(size)
    return tuple(out)


# ---- joining -------------------------------------------------------------------------------------
def cat(tensors, dim: int = 0):
    """The tensors joined along dim: every shape equal except at dim. Differentiable (each
    input gets its slice of the gradient)."""
    tensors = _joinable("cat", tensors)
    first = tensors[0]
    if first.ndim == 0:
        raise RuntimeError("cat: zero-dimensional tensor (tensors[0]) cannot be concatenated")
    axis = dim_index(dim, first.ndim)
    for i, t in enumerate(tensors[1:], 1):
        others = [n for j, n in enumerate(t.shape) if j != axis]
        if t.ndim != first.ndim or others != [n for j, n in enumerate(first.shape) if j != axis]:
            raise RuntimeError(
                f"cat: tensors[{i}] has shape {t.shape}, which does not match tensors[0]'s "
                f"{first.shape} in every dim except dim {axis}"
            )
    return Cat.apply(*_common_dtype(tensors), dim=axis)


def stack(tensors, dim: int = 0):
    """The tensors (all of one shape) stacked along a new dim. Differentiable (each input gets
    its slice of the gradient)."""
    tensors = _joinable("stack", tensors)
    first = tensors[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.shape != first.shape:
            raise RuntimeError(
                f"stack: expects each tensor to be equal size, but tensors[{i}] has shape "
                f"{t.shape} and tensors[0] has {first.shape}"
            )
    return Stack.apply(*_common_dtype(tensors), dim=dim_index(dim, first.ndim + 1))


def _joinable(op: str, tensors) -> list:
    """The list, checked: not empty, only Tensors, all on tensors[0]'s device."""
    if isinstance(tensors, GraphTensor) or not isinstance(tensors, (list, tuple)):
        raise TypeError(f"{op}: tensors must be a list or tuple of Tensors, got {type(tensors)}")
    if not tensors:
        raise RuntimeError(f"{op}: expected a non-empty list of Tensors (tensors is empty)")
    for i, t in enumerate(tensors):
        if not isinstance(t, GraphTensor):
            raise TypeError(f"{op}: tensors[{i}] must be a Tensor, got {type(t).__name__}")
        if t.device != tensors[0].device:
            raise RuntimeError(
                f"{op}: tensors[{i}] is on {t.device!r}, but tensors[0] is on "
                f"{tensors[0].device!r}: all tensors must be on one device"
            )
    return list(tensors)


def _common_dtype(tensors) -> list:
    """The tensors in one dtype: an integer or bool tensor beside a float one takes the float's
    dtype, integers widen as NumPy widens them; two float dtypes are left for the op to refuse
    by name, as every op does (minidl/tensor.py's docstring)."""
    floats = {t.dtype for t in tensors if promotion.category(t.dtype) == 2}
    if len(floats) > 1:
        return list(tensors)
    target = floats.pop() if floats else np.result_type(*[t.dtype for t in tensors])
    return [t if t.dtype == target else t.astype(target) for t in tensors]
