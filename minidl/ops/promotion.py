"""Type promotion for the Tensor's operators, as PyTorch does it (``tests/test_semantics.py``).

Dtype kinds fall in categories bool < integer < floating point. A Python number (or a list or
array) takes the tensor's dtype unless its category is higher, then that category's default
dtype: int tensor + 1 stays int64, int tensor + 0.5 is float32, a float16 tensor * 0.5 stays
float16. An integer tensor beside a float tensor takes the float's dtype; ``/`` of integers is
float32. Two different floating-point dtypes are left for the op to refuse by name.

``self`` is the Tensor whose operator was called; ``other`` what it was given.
"""

from __future__ import annotations

import numbers
from typing import TYPE_CHECKING

import numpy as np

import minidl.tensor as _tensor  # tensor.py imports this module; Tensor is looked up at call time
from minidl import backend, dtypes

if TYPE_CHECKING:
    from minidl.tensor import Tensor

DEFAULT_DTYPE = np.float32  # what Python floats become (as in PyTorch)

# Type promotion (PyTorch's): dtype kinds in categories bool < integer < floating point, and
# the dtype a Python number of a higher category makes.
_BOOL, _INT, _FLOAT = 0, 1, 2
_CATEGORY = {"b": _BOOL, "u": _INT, "i": _INT, "f": _FLOAT}
_DEFAULT_OF_CATEGORY = {_INT: np.int64, _FLOAT: DEFAULT_DTYPE}


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


def promote(self: Tensor, other) -> tuple[Tensor, Tensor]:
    """(self, other) as two tensors, promoted as PyTorch does (see the module docstring)."""
    if isinstance(other, _tensor.Tensor):
        if other.data.dtype == self.data.dtype:
            return self, other
        mine, theirs = _CATEGORY[dtypes.kind(self.dtype)], _CATEGORY[dtypes.kind(other.dtype)]
        if mine == _FLOAT and theirs < _FLOAT:
            return self, other.astype(self.dtype)
        if theirs == _FLOAT and mine < _FLOAT:
            return self.astype(other.dtype), other
        return self, other
    xp = backend.xp(self.device)
    if type(other) in (float, int) and dtypes.kind(self.dtype) == "f":  # the common case, fast
        if dtypes.is_16bit(self.dtype):
            return self, _wrapped_number(xp.asarray(other, dtype=np.float32), self.device)
        return self, _tensor.Tensor._wrap(xp.asarray(other, dtype=self.dtype), self.device, False)
    if isinstance(other, numbers.Number):
        category = _scalar_category(other)
        a = self
        if category > _CATEGORY[dtypes.kind(self.dtype)]:
            a = self.astype(_DEFAULT_OF_CATEGORY[category])
        if dtypes.is_16bit(a.dtype):
            return a, _wrapped_number(xp.asarray(other, dtype=np.float32), self.device)
        # astype after asarray: a negative int wraps into an unsigned dtype, as in PyTorch
        value = xp.asarray(other).astype(a.dtype, copy=False)
        return a, _tensor.Tensor._wrap(value, self.device, False)
    # a list or an array: like a Python number of its category (never truncated into ints)
    value = _tensor.Tensor(other, device=self.device)
    category = _CATEGORY[dtypes.kind(value.dtype)]
    a = self
    if category > _CATEGORY[dtypes.kind(self.dtype)]:
        a = self.astype(_DEFAULT_OF_CATEGORY[category])
    return a, value if value.dtype == a.dtype else value.astype(a.dtype)


def _wrapped_number(value, device: str) -> Tensor:
    """A Python number beside a 16-bit tensor, kept in float32 (PyTorch's "opmath"): the op
    computes in float32 and ``Function.apply`` rounds its result to the tensor's dtype once, so
    ``x * 0.3`` is round(x * 0.3), not round(x * round(0.3)). Marked, so that the one-float-dtype
    rule does not count it (PyTorch's wrapped numbers do not take part in promotion either)."""
    number = _tensor.Tensor._wrap(value, device, False)
    number._wrapped_number = True
    return number


def sub_operands(self: Tensor, other) -> tuple[Tensor, Tensor]:
    other_is_bool = isinstance(other, (bool, np.bool_)) or (
        isinstance(other, _tensor.Tensor) and other.dtype == bool
    )
    if self.dtype == bool or other_is_bool:
        raise TypeError(
            "sub: subtraction, the `-` operator, with a bool tensor is not supported (as in "
            "PyTorch); to invert a mask use mask == False, or convert with .astype(int)"
        )
    return promote(self, other)


def true_divide_operands(self: Tensor, other) -> tuple[Tensor, Tensor]:
    # "/" is true division: integers (and bools) divide in the default float dtype, from
    # their own values (a negative Python int must not wrap into a uint8 tensor's dtype first)
    a, b = promote(self, other)
    if dtypes.kind(a.dtype) != "f":
        a = self.astype(DEFAULT_DTYPE)
        if isinstance(other, _tensor.Tensor):
            b = other.astype(DEFAULT_DTYPE)
        else:
            b = promote(a, other)[1]
    return a, b
