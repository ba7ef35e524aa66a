"""The Tensor: an array, its device, and its place in the autograd graph.

This is the user's face of the engine: construction, conversion, ``backward()`` and the Python
operators. Each operator calls a small ``Function`` (forward and backward side by side) in
``minidl/ops/tensor_ops.py``; the layers with CUDA kernels of our own live beside it in
``minidl/ops``. ``docs/autograd.md`` traces one expression through the graph.
"""

from __future__ import annotations

import numbers

import numpy as np

from minidl import backend
from minidl.autograd import backward
from minidl.ops.tensor_ops import (
    Add,
    Cast,
    Div,
    Exp,
    GetItem,
    Log,
    MatMul,
    Max,
    Mul,
    Neg,
    Permute,
    Pow,
    Reshape,
    Sub,
    Sum,
    ToDevice,
)

DEFAULT_DTYPE = np.float32


class Tensor:
    """An n-dimensional array with an optional gradient, on "cpu" or "cuda"."""

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str = "cpu"):
        device = backend.check_device(device)
        if isinstance(data, Tensor):
            data = data.data
        from_array = hasattr(data, "dtype")
        array = backend.move(data, device)
        if dtype is not None:
            array = array.astype(dtype, copy=False)
        elif array.dtype.kind == "f" and not (from_array and array.dtype == np.float64):
            # Python floats become float32 (as in PyTorch); a float64 array keeps its precision.
            array = array.astype(DEFAULT_DTYPE, copy=False)
        if requires_grad and array.dtype.kind != "f":
            raise TypeError(f"requires_grad needs a floating-point dtype, got {array.dtype}")
        self.data = array
        self.device = device
        self.requires_grad = bool(requires_grad)
        self._grad: Tensor | None = None
        self._node = None

    @classmethod
    def _wrap(cls, array, device: str, requires_grad: bool) -> Tensor:
        """Make a tensor around an array already on ``device`` (no copy, no checks)."""
        t = cls.__new__(cls)
        t.data = array
        t.device = device
        t.requires_grad = requires_grad
        t._grad = None
        t._node = None
        return t

    @property
    def grad(self) -> Tensor | None:
        """d(loss)/d(self), summed over every backward() since it was last cleared; None before."""
        return self._grad

    @grad.setter
    def grad(self, value: Tensor | None) -> None:
        # An optimizer reads grad beside data, so a grad that does not match the tensor would
        # fail deep inside it (or broadcast silently): refuse it here, naming what is expected.
        if value is not None:
            if not isinstance(value, Tensor):
                raise TypeError(f"grad must be a Tensor or None, got {type(value).__name__}")
            if value.shape != self.shape:
                raise ValueError(f"grad has shape {value.shape}, expected {self.shape}")
            if value.dtype != self.dtype:
                raise TypeError(f"grad is {value.dtype}, expected the tensor's {self.dtype}")
            if value.device != self.device:
                raise ValueError(
                    f"grad is on {value.device!r}, expected the tensor's device {self.device!r} "
                    f"(use grad.to({self.device!r}))"
                )
        self._grad = value

    # ---- information -------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    def size(self, dim: int | None = None):
        return self.shape if dim is None else self.shape[dim]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        dev = "" if self.device == "cpu" else f", device='{self.device}'"
        return f"tensor({backend.to_numpy(self.data)!r}{dev}{grad})"

    # ---- conversion --------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a copy when the tensor is on the GPU)."""
        return backend.to_numpy(self.data)

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def tolist(self):
        return self.numpy().tolist()

    def to(self, device: str) -> Tensor:
        """This tensor on another device; differentiable, like PyTorch's."""
        device = backend.check_device(device)
        if device == self.device:
            return self
        return ToDevice.apply(self, device=device)

    def cuda(self) -> Tensor:
        return self.to("cuda")

    def cpu(self) -> Tensor:
        return self.to("cpu")

    def astype(self, dtype) -> Tensor:
        return Cast.apply(self, dtype=np.dtype(dtype))

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def detach(self) -> Tensor:
        """The same values, cut from the graph."""
        return Tensor._wrap(self.data, self.device, False)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ---- autograd ----------------------------------------------------------------------------
    def backward(self, gradient=None) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is d(loss)/d(self); it may be left out only when self is a scalar.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        xp = backend.xp(self.device)
        if gradient is None:
            if self.data.size != 1:
                raise RuntimeError(
                    f"backward() without a gradient needs a scalar, got shape {self.shape}"
                )
            grad = xp.ones_like(self.data)
        else:
            grad = gradient.data if isinstance(gradient, Tensor) else gradient
            grad = xp.asarray(backend.move(grad, self.device), dtype=self.dtype)
            if grad.shape != self.data.shape:
                raise ValueError(
                    f"gradient has shape {tuple(grad.shape)}, expected the tensor's {self.shape}"
                )
        backward(self, grad)

    # ---- math --------------------------------------------------------------------------------
    def _other(self, value) -> Tensor:
        if isinstance(value, Tensor):
            return value
        if isinstance(value, numbers.Number):
            xp = backend.xp(self.device)
            return Tensor._wrap(xp.asarray(value, dtype=self.dtype), self.device, False)
        return Tensor(value, dtype=self.dtype, device=self.device)

    def __add__(self, other):
        return Add.apply(self, self._other(other))

    def __radd__(self, other):
        return Add.apply(self._other(other), self)

    def __sub__(self, other):
        return Sub.apply(self, self._other(other))

    def __rsub__(self, other):
        return Sub.apply(self._other(other), self)

    def __mul__(self, other):
        return Mul.apply(self, self._other(other))

    def __rmul__(self, other):
        return Mul.apply(self._other(other), self)

    def __truediv__(self, other):
        return Div.apply(self, self._other(other))

    def __rtruediv__(self, other):
        return Div.apply(self._other(other), self)

    def __neg__(self):
        return Neg.apply(self)

    def __pow__(self, other):
        return Pow.apply(self, self._other(other))

    def __rpow__(self, other):
        return Pow.apply(self._other(other), self)

    def __matmul__(self, other):
        return MatMul.apply(self, self._other(other))

    def __rmatmul__(self, other):
        return MatMul.apply(self._other(other), self)

    def __getitem__(self, index):
        if isinstance(index, Tensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, Tensor) else i for i in index)
        return GetItem.apply(self, index=index)

    # Comparisons give plain boolean tensors (no gradient), as in PyTorch.
    def _compare(self, other, op) -> Tensor:
        other = other.data if isinstance(other, Tensor) else other
        return Tensor._wrap(op(self.data, other), self.device, False)

    def __eq__(self, other):  # noqa: D105 - element-wise, like NumPy and PyTorch
        return self._compare(other, lambda a, b: a == b)

    def __ne__(self, other):
        return self._compare(other, lambda a, b: a != b)

    def __lt__(self, other):
        return self._compare(other, lambda a, b: a < b)

    def __le__(self, other):
        return self._compare(other, lambda a, b: a <= b)

    def __gt__(self, other):
        return self._compare(other, lambda a, b: a > b)

    def __ge__(self, other):
        return self._compare(other, lambda a, b: a >= b)

    __hash__ = object.__hash__

    def exp(self):
        return Exp.apply(self)

    def log(self):
        return Log.apply(self)

    # Reductions take NumPy's (axis, keepdims) or PyTorch's (dim, keepdim) names.
    def sum(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        return Sum.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        axes = _axes(axis, self.ndim)
        count = self.numel() if axes is None else int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axis, keepdims) * (1.0 / count)

    def max(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """The maximum values (ties share the gradient); unlike torch.max(dim), no indices."""
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        return Max.apply(self, axis=_axes(axis, self.ndim), keepdims=keepdims)

    def argmax(self, axis=None, *, dim=None) -> Tensor:
        xp = backend.xp(self.device)
        axis = dim if dim is not None else axis
        return Tensor._wrap(xp.argmax(self.data, axis=axis), self.device, False)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        start, end = start_dim % self.ndim, end_dim % self.ndim
        return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1 :])

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        if sorted(d % self.ndim for d in dims) != list(range(self.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of {self.ndim} axes")
        return Permute.apply(self, dims=tuple(d % self.ndim for d in dims))

    def transpose(self, dim0: int = 0, dim1: int = 1):
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return Permute.apply(self, dims=tuple(dims))

    @property
    def T(self):
        return Permute.apply(self, dims=tuple(reversed(range(self.ndim))))


def _reduction_args(axis, keepdims, dim, keepdim):
    return (dim if dim is not None else axis), (keepdim if keepdim is not None else keepdims)


def _axes(axis, ndim: int) -> tuple[int, ...] | None:
    if axis is None:
        return None
    if isinstance(axis, int):
        axis = (axis,)
    return tuple(a % ndim for a in axis)


def tensor(data, requires_grad: bool = False, dtype=None, device: str = "cpu") -> Tensor:
    """Make a tensor. Floating data becomes float32 unless it is float64 or ``dtype`` says."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
