"""Floating-point dtypes, bfloat16 included, and the two rules 16-bit storage needs on NumPy.

bfloat16 is ``ml_dtypes.bfloat16``: a real NumPy dtype (2 bytes: the top half of a float32), and
the dtype CuPy (14 and later) takes for bfloat16 arrays, so one array type serves the CPU, the
kernel emulator and the GPU. NumPy does not file it among the floating kinds (its ``kind`` is
"V"), so minidl asks ``kind(dtype)`` here, never ``dtype.kind``. Without ml_dtypes installed,
``bfloat16`` is None and ``require_bfloat16`` says how to get it.

NumPy computes 16-bit math in ways a GPU does not, so two operations go through this module:

- ``matmul``: NumPy multiplies float16 without BLAS and bfloat16 into a float32 result. Here a
  16-bit product takes float32 inputs, sums in float32 and is rounded once to the storage dtype,
  as cuBLAS does with 16-bit inputs and float32 accumulation (CuPy's matmul does that itself).
- ``sum``: NumPy adds bfloat16 in bfloat16 (10,000 additions of 0.01 give 4.0, not 100). A 16-bit
  sum accumulates in float32 and is rounded once, as our kernels' ``acc_t`` and PyTorch do.

And the rule of every 16-bit op, "compute in float32, round once", as two named steps:
``to_compute(array)`` widens 16-bit storage to float32 where an op computes (softmax, LRN,
BatchNorm, conv's col2im, as their kernels do), and ``round_to_storage(result, storage)`` rounds a
result or gradient that came back wider to the 16-bit dtype, once. ``Function.apply`` and
``autograd.backward`` call the second for every op (``minidl/autograd.py``): NumPy widens
bfloat16 to float32 beside a Python float (``x * 0.5``), and a float32 constant beside a 16-bit
tensor makes a float32 result (``minidl/promotion.py``).
"""

from __future__ import annotations

import numpy as np

try:
    import ml_dtypes

    bfloat16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # a checkout run without installing: everything but bfloat16 works
    bfloat16 = None

float16 = np.dtype(np.float16)
float32 = np.dtype(np.float32)
float64 = np.dtype(np.float64)


def require_bfloat16(what: str) -> np.dtype:
    """The bfloat16 dtype, or an ImportError saying ``what`` needs ml_dtypes."""
    if bfloat16 is None:
        raise ImportError(
            f"{what}: bfloat16 needs the ml_dtypes package, which is not installed "
            "(pip install 'ml_dtypes>=0.5'; it is one of minidl's own dependencies, so "
            "'pip install minidl' brings it and a checkout used without installing may lack it)"
        )
    return bfloat16


def resolve(dtype, what: str = "dtype") -> np.dtype:
    """``np.dtype(dtype)``, where "bfloat16" without ml_dtypes says which package it needs
    (NumPy's own answer is "data type 'bfloat16' not understood")."""
    if bfloat16 is None and str(dtype) in ("bfloat16", "bf16"):
        require_bfloat16(what)
    return np.dtype(dtype)


def is_bfloat16(dtype) -> bool:
    return bfloat16 is not None and np.dtype(dtype) == bfloat16


def kind(dtype) -> str:
    """NumPy's kind letter ("b", "i", "u", "f", ...), with bfloat16 counted as "f"."""
    dtype = np.dtype(dtype)
    if dtype.kind == "V" and dtype == bfloat16:
        return "f"
    return dtype.kind


def is_floating(dtype) -> bool:
    return kind(dtype) == "f"


def is_16bit(dtype) -> bool:
    """float16 or bfloat16: stored in 16 bits, computed and accumulated in float32."""
    dtype = np.dtype(dtype)
    return dtype == float16 or (bfloat16 is not None and dtype == bfloat16)


def compute_dtype(dtype) -> np.dtype:
    """What a value of ``dtype`` is computed in: float32 for 16-bit storage, else itself."""
    return float32 if is_16bit(dtype) else np.dtype(dtype)


def to_compute(array):
    """``array`` in its compute dtype: a 16-bit array widened to float32, anything else as it is
    (no copy). The first half of "compute in float32, round once"."""
    return array.astype(compute_dtype(array.dtype), copy=False)


def round_to_storage(array, storage):
    """A floating result or gradient that came back wider than the 16-bit ``storage`` dtype,
    rounded to it once; anything else as it is. The second half of "compute in float32, round
    once", applied to every op's result and every gradient by the autograd."""
    if array.dtype != storage and is_16bit(storage) and kind(array.dtype) == "f":
        return array.astype(storage)
    return array


def _is_numpy(array) -> bool:
    return isinstance(array, (np.ndarray, np.generic))


def matmul(a, b):
    """``a @ b``; 16-bit NumPy operands are multiplied in float32 and rounded once."""
    if _is_numpy(a) and is_16bit(a.dtype):
        return np.matmul(a.astype(np.float32), b.astype(np.float32)).astype(a.dtype)
    return a @ b


def sum(array, axis=None, keepdims: bool = False):  # noqa: A001 - it is a sum
    """``array.sum(axis)``; a 16-bit array is summed in float32 and rounded once."""
    if is_16bit(array.dtype):
        total = array.sum(axis=axis, dtype=np.float32, keepdims=keepdims)
        return total.astype(array.dtype)
    return array.sum(axis=axis, keepdims=keepdims)
