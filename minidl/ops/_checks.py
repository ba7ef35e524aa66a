"""Argument checks shared by the ops: each error names the op, the argument and what it expected."""

from __future__ import annotations

import numbers

from minidl.autograd import GraphTensor


def require_tensor(op: str, name: str, value, ndim: int | None = None, layout: str = "") -> None:
    if not isinstance(value, GraphTensor):  # minidl.tensor.Tensor's base: no import of the Tensor
        raise TypeError(f"{op}: {name} must be a minidl Tensor, got {type(value).__name__}")
    if ndim is not None and value.ndim != ndim:
        expected = f"{ndim}-D {layout}".strip()
        raise ValueError(f"{op}: {name} must be {expected}, got shape {value.shape}")


def pair(op: str, name: str, value, minimum: int) -> tuple[int, int]:
    """An int or an (h, w) pair of ints, each at least ``minimum``."""
    values = (value, value) if isinstance(value, numbers.Integral) else tuple(value)
    if len(values) != 2 or not all(isinstance(v, numbers.Integral) for v in values):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if any(v < minimum for v in values):
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return int(values[0]), int(values[1])
