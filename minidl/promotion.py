"""Type promotion for the Tensor's operators, as PyTorch does it (``tests/test_semantics.py``).

Dtype kinds fall in categories bool < integer < floating point. A Python number (or a list or
array) takes the tensor's dtype unless its category is higher, then that category's default
dtype: int tensor + 1 stays int64, int tensor + 0.5 is float32, a float16 tensor * 0.5 stays
float16. An integer tensor beside a float tensor takes the float's dtype; ``/`` of integers is
float32. Two different floating-point dtypes are left for the op to refuse by name.

A Python number beside a 16-bit tensor is kept in float32 (PyTorch's "opmath"): the op computes
in float32 and ``Function.apply`` rounds its result to the tensor's dtype once, so ``x * 0.3`` is
round(x * 0.3), not round(x * round(0.3)).

``operands(self, other)`` (the Tensor's ``_operands``) applies the rules: another Tensor is cast
to the promoted dtype, a number or list becomes a plain array, a constant of the op.
"""

from __future__ import annotations

import numbers

import numpy as np

from minidl import backend, dtypes
from minidl.autograd import GraphTensor

DEFAULT_DTYPE = np.dtype(np.float32)  # what Python floats become (as in PyTorch)

_BOOL, _INT, _FLOAT = 0, 1, 2
_CATEGORY = {"b": _BOOL, "u": _INT, "i": _INT, "f": _FLOAT}
_DEFAULT_OF_CATEGORY = {_INT: np.dtype(np.int64), _FLOAT: DEFAULT_DTYPE}


def category(dtype) -> int:
    """A dtype's category: 0 bool, 1 integer, 2 floating point (bfloat16 included)."""
    return _CATEGORY[dtypes.kind(dtype)]


def _scalar_category(value) -> int:
    if type(value) is float:  # the common case first: isinstance with an ABC is slow
        return _FLOAT
    if isinstance(value, (bool, np.bool_)):
        return _BOOL
    if isinstance(value, numbers.Integral):
        return _INT
    if isinstance(value, numbers.Real):
        return _FLOAT
    raise TypeError(f"minidl tensors are real-valued; got the number {value!r}")


def tensor_dtypes(mine, theirs) -> tuple[np.dtype, np.dtype]:
    """The dtypes two tensors' operands take: an integer or bool tensor beside a float one takes
    the float's dtype; anything else is left as it is (the op refuses two float dtypes)."""
    if mine == theirs:
        return mine, theirs
    a, b = category(mine), category(theirs)
    if a == _FLOAT and b < _FLOAT:
        return mine, mine
    if b == _FLOAT and a < _FLOAT:
        return theirs, theirs
    return mine, theirs


def constant_operand(mine, other, device: str) -> tuple[np.dtype, object]:
    """(the dtype the tensor takes, ``other`` as an array on ``device``) for a tensor of dtype
    ``mine`` beside a Python number, a list or an array."""
    xp = backend.xp(device)
    if type(other) in (float, int) and dtypes.kind(mine) == "f":  # the common case, fast
        dtype = dtypes.float32 if dtypes.is_16bit(mine) else mine
        return mine, xp.asarray(other, dtype=dtype)
    if isinstance(other, numbers.Number):
        kind = _scalar_category(other)
        if kind > category(mine):
            mine = _DEFAULT_OF_CATEGORY[kind]
        if dtypes.is_16bit(mine):
            return mine, xp.asarray(other, dtype=np.float32)
        # astype after asarray: a negative int wraps into an unsigned dtype, as in PyTorch
        return mine, xp.asarray(other).astype(mine, copy=False)
    # a list or an array: like a Python number of its category (never truncated into ints)
    value = backend.move(other, device)
    if dtypes.kind(value.dtype) not in "biuf":
        raise TypeError(f"an operand must be booleans, integers or floats, got {value.dtype}")
    if value.dtype.kind == "f" and not hasattr(other, "dtype"):
        value = value.astype(DEFAULT_DTYPE)  # Python floats in a list are float32, as tensor()
    if category(value.dtype) > category(mine):
        mine = _DEFAULT_OF_CATEGORY[category(value.dtype)]
    return mine, value.astype(mine, copy=False)


def operands(self, other):
    """(self, other) promoted: other a Tensor cast to the promoted dtype, or a constant array."""
    if isinstance(other, GraphTensor):
        mine, theirs = tensor_dtypes(self.dtype, other.dtype)
        return _cast(self, mine), _cast(other, theirs)
    mine, value = constant_operand(self.dtype, other, self.device)
    return _cast(self, mine), value


def subtraction_operands(self, other):
    check_subtraction(self.dtype, other)
    return operands(self, other)


def division_operands(self, other):
    """True division: integers (and bools) divide in the default float dtype, from their own
    values (a negative Python int must not wrap into a uint8 tensor's dtype first)."""
    a, b = operands(self, other)
    dtype = division_dtype(a.dtype, b.dtype)
    if dtype is None:
        return a, b
    if isinstance(other, GraphTensor):
        return self.astype(dtype), other.astype(dtype)
    return self.astype(dtype), constant_operand(dtype, other, self.device)[1]


def _cast(t, dtype):
    return t if t.dtype == dtype else t.astype(dtype)


def check_subtraction(mine, other) -> None:
    """``-`` with a bool operand (a bool tensor, a Python or NumPy bool) is refused, as in
    PyTorch."""
    boolean = np.dtype(bool)
    other_is_bool = isinstance(other, (bool, np.bool_)) or getattr(other, "dtype", None) == boolean
    if mine == boolean or other_is_bool:
        raise TypeError(
            "sub: subtraction, the `-` operator, with a bool tensor is not supported (as in "
            "PyTorch); to invert a mask use mask == False, or convert with .astype(int)"
        )


def division_dtype(mine, theirs) -> np.dtype | None:
    """True division of integers (and bools) happens in the default float dtype: the dtype both
    operands are cast to, from their own values; None when one of them is floating already."""
    if dtypes.kind(mine) != "f" and dtypes.kind(theirs) != "f":
        return DEFAULT_DTYPE
    return None
