"""Dims and indices as PyTorch reads them: the Tensor's semantics where NumPy's differ.

- A dim is in [-ndim, ndim - 1], else PyTorch's ``IndexError: Dimension out of range``; a 0-d
  tensor takes dims 0 and -1 (``dim_index``, ``dim_tuple`` for reductions).
- Indexing applies integers first, then index arrays (``x[0, :, [1, 2]]`` is (3, 2) on a (2, 3, 4)
  tensor, where NumPy would give (2, 3)): ``torch_index``.
"""

from __future__ import annotations

import numbers

import numpy as np


def dim_index(dim, ndim: int) -> int:
    """One dim in [-ndim, ndim - 1] -> [0, ndim); a 0-d tensor takes 0 and -1, as in PyTorch.

    Out of range is PyTorch's IndexError, never NumPy's silent wrap-around (``dim % ndim``).
    """
    if type(dim) is not int and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral)):
        raise TypeError(f"dim must be an int, got {dim!r}")
    low, high = -max(ndim, 1), max(ndim, 1) - 1
    if not low <= dim <= high:
        raise IndexError(
            f"Dimension out of range (expected to be in range of [{low}, {high}], but got {dim})"
        )
    return int(dim) % max(ndim, 1)


def dim_tuple(dims, ndim: int) -> tuple[int, ...] | None:
    """Reduction dims (None, an int or a sequence) as sorted axes; None means every axis.

    As in PyTorch, an empty sequence also means every axis, a repeated dim is an error, and a
    0-d tensor's dims 0 and -1 name no axis at all (the reduction is the identity).
    """
    if dims is None:
        return None
    if type(dims) is int or isinstance(dims, numbers.Integral):
        axis = dim_index(dims, ndim)  # checked even on a 0-d tensor
        return (axis,) if ndim > 0 else ()
    if not dims:
        return None
    axes = [dim_index(d, ndim) for d in dims]
    for axis in axes:
        if axes.count(axis) > 1:
            raise RuntimeError(f"dim {axis} appears multiple times in the list of dims")
    return tuple(sorted(axes)) if ndim > 0 else ()


# ---- indices, as PyTorch applies them --------------------------------------------------------
def _is_integer(i) -> bool:
    """A Python or NumPy integer, or a 0-d integer array: PyTorch selects with it (no new dim)."""
    if isinstance(i, (bool, np.bool_)):
        return False
    if isinstance(i, numbers.Integral):
        return True
    return getattr(i, "ndim", None) == 0 and i.dtype.kind in "iu"


def _is_advanced(i) -> bool:
    return isinstance(i, list) or getattr(i, "ndim", 0) > 0


def torch_index(index, ndim: int) -> tuple[tuple, tuple | None]:
    """Split ``index`` into (basic, advanced) with ``a[basic][advanced]`` ordered as PyTorch does.

    PyTorch applies integer indices first (each selects and removes its dim) and then the index
    arrays; NumPy counts an integer as one more index array. The two agree except when a slice
    separates an integer from an index array: ``x[0, :, [1, 2]]`` on (2, 3, 4) is (3, 2) in
    PyTorch, but NumPy moves the "advanced" dims to the front, (2, 3). So when an index mixes
    integers and arrays, apply the integers (with the slices and Nones, a view) first. Returns
    (index, None) when NumPy's order is PyTorch's already.
    """
    if type(index) in (int, slice):  # the common cases, no arrays: NumPy's order is PyTorch's
        return index, None
    index = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, (bool, np.bool_)) for i in index):
        return index, None  # a bool scalar (a new dim of size 1 or 0) keeps NumPy's rules
    index = tuple(int(i) if _is_integer(i) else i for i in index)
    has_int = any(type(i) is int for i in index)
    if not (has_int and any(_is_advanced(i) for i in index)):
        return index, None

    def consumed(i):  # how many of the array's dims an entry indexes
        if i is None:
            return 0
        if _is_advanced(i):
            mask = np.asarray(i) if isinstance(i, list) else i
            return mask.ndim if mask.dtype == bool else 1
        return 1

    ellipsis = [k for k, i in enumerate(index) if i is Ellipsis]  # "in" would compare arrays
    if ellipsis:
        at = ellipsis[0]
        rest = index[:at] + index[at + 1 :]
        fill = (slice(None),) * (ndim - sum(consumed(i) for i in rest))
        index = index[:at] + fill + index[at + 1 :]
    basic = tuple(slice(None) if _is_advanced(i) else i for i in index)
    advanced = tuple(i if _is_advanced(i) else slice(None) for i in index if type(i) is not int)
    return basic, advanced
