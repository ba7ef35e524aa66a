"""The Tensor: an array, its device, and its place in the autograd graph.

This is the user's face of the engine: construction, conversion, ``backward()`` and the Python
operators. Each operator calls a small ``Function`` (forward and backward side by side) in
``minidl/ops/tensor_ops.py``; the layers with CUDA kernels of our own live beside it in
``minidl/ops``. ``docs/autograd.md`` traces one expression through the graph.

PyTorch's semantics where a user's habits reach (``tests/test_semantics.py`` checks each):

- dtypes: ``tensor()`` keeps an array's dtype (float16 stays float16) and makes Python floats
  float32. An op that cannot take a dtype refuses it by name (``Function.dtype_kinds``).
- type promotion, by category bool < integer < floating point: a Python number takes the
  tensor's dtype unless its category is higher, then the category's default dtype (int tensor
  + 1 stays int64, int tensor + 0.5 is float32, float16 tensor * 0.5 stays float16); an integer
  tensor beside a float tensor takes the float's dtype; ``/`` of integers is float32. Two
  different floating-point dtypes are refused by name, where PyTorch would widen to the larger:
  float32 meeting float64 is most often a mistake that doubles memory (use ``.double()``).
  The rules are ``minidl/promotion.py``.
- dims: in [-ndim, ndim - 1], else PyTorch's ``IndexError: Dimension out of range``; a 0-d
  tensor takes dims 0 and -1. ``mean`` over an empty dim is NaN (0 / 0).
- indexing: integers select first, then index arrays (``x[0, :, [1, 2]]`` is (3, 2) on a
  (2, 3, 4) tensor, where NumPy would give (2, 3)); see ``minidl/indexing.py``.
"""

from __future__ import annotations

import numbers

import numpy as np

from minidl import backend, dtypes, promotion
from minidl.autograd import GraphTensor, backward
from minidl.indexing import dim_index, dim_tuple
from minidl.inplace import InPlace, OneValue
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
from minidl.tensor_api import TorchMethods


class Tensor(TorchMethods, InPlace, OneValue, GraphTensor):
    """An n-dimensional array with an optional gradient, on "cpu" or "cuda"."""

    def __init__(self, data, requires_grad: bool = False, dtype=None, device: str = "cpu"):
        device = backend.check_device(device)
        if isinstance(data, Tensor):
            data = data.data
        from_array = hasattr(data, "dtype")
        array = backend.move(data, device)
        if dtypes.kind(array.dtype) not in "biuf":
            raise TypeError(
                f"tensor: data must be booleans, integers or floats, got dtype {array.dtype}"
                + (" (a list of Tensors? stack their .numpy())" if array.dtype == object else "")
            )
        if dtype is not None:
            array = array.astype(dtypes.resolve(dtype, "tensor"), copy=False)
        elif array.dtype.kind == "f" and not from_array:
            # Python floats become float32 (as in PyTorch); an array keeps its float dtype
            # (float16 and float64 included), as torch.tensor(array) does.
            array = array.astype(promotion.DEFAULT_DTYPE, copy=False)
        if requires_grad and dtypes.kind(array.dtype) != "f":
            raise TypeError(f"requires_grad needs a floating-point dtype, got {array.dtype}")
        if array is data or not array.flags.c_contiguous:
            # our own C-contiguous copy, as torch.tensor makes (``from_numpy`` shares an array)
            array = backend.xp(device).array(array, order="C")
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

    def _new(self, array, requires_grad: bool) -> Tensor:
        """A plain Tensor on this device (the autograd makes op results and grads with it)."""
        return Tensor._wrap(array, self.device, requires_grad)

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
        return self.shape if dim is None else self.shape[dim_index(dim, self.ndim)]

    def numel(self) -> int:
        return int(self.data.size)

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self) -> str:
        """As PyTorch prints one: ``tensor([1., 2.])``, a dtype other than its kind's default."""
        values = backend.to_numpy(self.data)
        text = np.array2string(values, separator=", ", prefix="tensor(")
        plain = values.dtype in (np.float32, np.int64, np.bool_)
        extras = "" if plain else f", dtype={values.dtype}"
        extras += "" if self.device == "cpu" else f", device='{self.device}'"
        extras += ", requires_grad=True" if self.requires_grad else ""
        return f"tensor({text}{extras})"

    # ---- conversion --------------------------------------------------------------------------
    def numpy(self) -> np.ndarray:
        """The values as a NumPy array (a copy when the tensor is on the GPU)."""
        return backend.to_numpy(self.data)

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
        return Cast.apply(self, dtype=dtypes.resolve(dtype, "astype"))

    def double(self) -> Tensor:
        return self.astype(np.float64)

    def float(self) -> Tensor:
        return self.astype(np.float32)

    def requires_grad_(self, flag: bool = True) -> Tensor:
        self.requires_grad = flag
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # ---- autograd ----------------------------------------------------------------------------
    def backward(self, gradient=None, retain_graph: bool = False) -> None:
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``gradient`` is d(loss)/d(self); it may be left out only when self is a scalar. The
        graph's saved arrays are released as backward goes, unless ``retain_graph`` (to run
        backward through the same graph again), as in PyTorch.
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
        backward(self, grad, retain_graph)

    # ---- math --------------------------------------------------------------------------------
    # The operands of a binary operator, promoted as PyTorch does (minidl/promotion.py): other
    # becomes a Tensor of the promoted dtype, or a constant array of the op.
    _operands = promotion.operands
    _subtraction_operands = promotion.subtraction_operands
    _division_operands = promotion.division_operands

    def __add__(self, other):
        a, b = self._operands(other)
        return Add.apply(a, b)

    def __radd__(self, other):
        a, b = self._operands(other)
        return Add.apply(b, a)

    def __sub__(self, other):
        a, b = self._subtraction_operands(other)
        return Sub.apply(a, b)

    def __rsub__(self, other):
        a, b = self._subtraction_operands(other)
        return Sub.apply(b, a)

    def __mul__(self, other):
        a, b = self._operands(other)
        return Mul.apply(a, b)

    def __rmul__(self, other):
        a, b = self._operands(other)
        return Mul.apply(b, a)

    def __truediv__(self, other):
        a, b = self._division_operands(other)
        return Div.apply(a, b)

    def __rtruediv__(self, other):
        a, b = self._division_operands(other)
        return Div.apply(b, a)

    def __neg__(self):
        return Neg.apply(self)

    def __pow__(self, other):
        if dtypes.kind(self.dtype) != "f" and isinstance(other, numbers.Integral) and other < 0:
            # checked before promotion wraps -3 into an unsigned dtype (NumPy's own message)
            raise ValueError("pow: Integers to negative integer powers are not allowed.")
        a, b = self._operands(other)
        return Pow.apply(a, b)

    def __rpow__(self, other):
        a, b = self._operands(other)
        return Pow.apply(b, a)

    def __matmul__(self, other):
        a, b = self._operands(other)
        return MatMul.apply(a, b)

    def __rmatmul__(self, other):
        a, b = self._operands(other)
        return MatMul.apply(b, a)

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

    def _floating(self) -> Tensor:
        # exp and log of an integer (or bool) tensor are float32, as in PyTorch (NumPy: float64)
        return self if dtypes.kind(self.dtype) == "f" else self.astype(promotion.DEFAULT_DTYPE)

    def exp(self):
        return Exp.apply(self._floating())

    def log(self):
        return Log.apply(self._floating())

    # Reductions take NumPy's (axis, keepdims) or PyTorch's (dim, keepdim) names, and PyTorch's
    # dims (``dim_tuple``: out of range is an IndexError, a 0-d tensor takes 0 and -1).
    def sum(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        return Sum.apply(self, axis=dim_tuple(axis, self.ndim), keepdims=keepdims)

    def mean(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """sum / count; over an empty dim that is 0 / 0 = NaN, as in PyTorch."""
        if dtypes.kind(self.dtype) != "f":
            raise TypeError(
                f"mean: needs a floating-point tensor, got {self.dtype} (as in PyTorch; "
                "use .float() or .double() first)"
            )
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        axes = dim_tuple(axis, self.ndim)
        count = self.numel() if axes is None else int(np.prod([self.shape[a] for a in axes]))
        return self.sum(axes, keepdims) * (1.0 / count if count else float("nan"))

    def max(self, axis=None, keepdims: bool = False, *, dim=None, keepdim=None):
        """The maximum values (ties share the gradient); unlike torch.max(dim), no indices."""
        axis, keepdims = _reduction_args(axis, keepdims, dim, keepdim)
        return Max.apply(self, axis=dim_tuple(axis, self.ndim), keepdims=keepdims)

    def argmax(self, axis=None, *, dim=None) -> Tensor:
        xp = backend.xp(self.device)
        axis = dim if dim is not None else axis
        if axis is not None:
            axis = dim_index(axis, self.ndim) if self.ndim else None
        return Tensor._wrap(xp.argmax(self.data, axis=axis), self.device, False)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return Reshape.apply(self, shape=shape)

    view = reshape

    def flatten(self, start_dim: int = 0, end_dim: int = -1):
        """Dims start_dim..end_dim as one; a 0-d tensor becomes shape (1,), as in PyTorch."""
        start, end = dim_index(start_dim, self.ndim), dim_index(end_dim, self.ndim)
        if start > end:
            raise RuntimeError("flatten() has invalid args: start_dim cannot come after end_dim")
        return self.reshape(self.shape[:start] + (-1,) + self.shape[end + 1 :])

    def permute(self, *dims):
        if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
            dims = tuple(dims[0])
        axes = tuple(dim_index(d, self.ndim) for d in dims)
        if sorted(axes) != list(range(self.ndim)):
            raise ValueError(f"permute: dims {dims} are not a permutation of {self.ndim} axes")
        return Permute.apply(self, dims=axes)

    def transpose(self, dim0: int = 0, dim1: int = 1):
        dim0, dim1 = dim_index(dim0, self.ndim), dim_index(dim1, self.ndim)
        if self.ndim == 0:
            return self.reshape(())  # a 0-d tensor's only "dim" is 0 (PyTorch returns it as is)
        dims = list(range(self.ndim))
        dims[dim0], dims[dim1] = dims[dim1], dims[dim0]
        return Permute.apply(self, dims=tuple(dims))

    @property
    def T(self):
        return Permute.apply(self, dims=tuple(reversed(range(self.ndim))))


def _reduction_args(axis, keepdims, dim, keepdim):
    return (dim if dim is not None else axis), (keepdim if keepdim is not None else keepdims)


def tensor(data, requires_grad: bool = False, dtype=None, device: str = "cpu") -> Tensor:
    """Make a tensor. Python floats become float32; an array keeps its dtype (float16 and
    float64 too), as ``torch.tensor`` does; ``dtype`` overrides both."""
    return Tensor(data, requires_grad=requires_grad, dtype=dtype, device=device)
