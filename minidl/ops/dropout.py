"""Inverted dropout (paper section 4.2, Srivastava et al. 2014):

    training:  y = x * m / (1 - p),  m[i] ~ Bernoulli(1 - p)       eval:  y = x

Scaling the kept units by 1 / (1 - p) while training equals the paper's "multiply the outputs by
0.5 at test time" in expectation, and leaves evaluation untouched.

The mask comes from a counter-based generator: each call draws a 64-bit key from the global seed
(``minidl.manual_seed``), and element i (its flat index) is kept when

    bits(key, i) >> 8  >=  round(p * 2^24)          (a 24-bit uniform compared with p)

``bits`` is MurmurHash3's 32-bit finalizer applied twice (``dropout_bits`` below; the same lines
in ``kernels/dropout.cu``). The mask is therefore the same on the CPU and on the GPU, for any
launch shape, and the GPU backward regenerates it from the key instead of storing it: forward and
backward are the same mask-apply, one kernel (``dropout_apply``). A mask can also be injected
(``mask=``) for gradient checks.
Page: docs/dropout.md. Plain definition: the formula above, y = x * m / (1 - p), given the mask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl import random as mdl_random
from minidl.autograd import Function
from minidl.ops._checks import require_tensor

_M1 = np.uint32(0x85EBCA6B)
_M2 = np.uint32(0xC2B2AE35)
_GOLDEN = np.uint32(0x9E3779B9)

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def _fmix32(h):
    """MurmurHash3's finalizer: a bijection on uint32; an input bit flips ~half the output."""
    h = h ^ (h >> np.uint32(16))
    h = h * _M1
    h = h ^ (h >> np.uint32(13))
    h = h * _M2
    return h ^ (h >> np.uint32(16))


def dropout_bits(key: int, count: int, first: int = 0) -> np.ndarray:
    """32 random bits for each element index first .. first+count-1 under a 64-bit key."""
    index = np.arange(first, first + count, dtype=np.uint64)
    lo = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    key_lo, key_hi = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    h = _fmix32(lo ^ key_lo)
    return _fmix32(h + (hi ^ key_hi) * _GOLDEN)


def keep_threshold(p: float) -> int:
    """Keep element i when bits >> 8 >= this (a 24-bit integer, so both paths compare exactly)."""
    return int(round(p * (1 << 24)))


def dropout_mask_numpy(key: int, shape, p: float, first: int = 0) -> np.ndarray:
    bits = dropout_bits(key, int(np.prod(shape)), first)
    return ((bits >> np.uint32(8)) >= keep_threshold(p)).reshape(shape)


def _apply_numpy(x, m):
    """y = x * m in x's dtype (m: the mask times 1 / (1 - p), in the compute dtype)."""
    return (x * m).astype(x.dtype, copy=False)


# ---- CUDA (kernels/dropout.cu) -------------------------------------------------------------------
def _key_args(key: int):
    return np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)


def dropout_apply_cuda(x, key, p, first=0):
    """y[i] = keep(first + i) ? x[i] / (1 - p) : 0; forward passes x, backward passes dy."""
    # x: any shape, contiguous -> y: same shape
    y = backend.xp("cuda").empty_like(x)
    threshold, scale = np.uint32(keep_threshold(p)), cuda.real(x.dtype, 1.0 / (1.0 - p))
    args = (x, y, cuda.i64(x.size), cuda.i64(first), *_key_args(key), threshold, *scale)
    cuda.launch_1d("dropout", "dropout_apply", x.dtype, x.size, args)
    return y


# ---- autograd ------------------------------------------------------------------------------------
class DropoutFunction(Function):
    dtype_kinds = "f"  # an integer x would be truncated by the 1 / (1 - p) scale

    @staticmethod
    def forward(ctx, x, p, key, mask, first=0):
        # first: the element index x's first element has in the global batch (data parallel)
        # x: any shape -> y: same shape
        if mask is None and ctx.device == "cuda":
            shape = x.shape  # ascontiguousarray makes a 0-d array (1,): give y x's shape back
            x = backend.xp("cuda").ascontiguousarray(x)
            ctx.save(None, (key, first), p)  # backward regenerates the mask from the key
            return dropout_apply_cuda(x, key, p, first).reshape(shape)
        if mask is None:  # the whole batch's mask, drawn once; applied in parts below
            mask = dropout_mask_numpy(key, x.shape, p, first)
        # m = mask / (1 - p) in the compute dtype: a 16-bit x is scaled in float32 and rounded
        # once, as the kernel does (a 16-bit 1 / (1 - p) would be rounded first: 1/0.6 is 1.667
        # in float16, and y would differ from the GPU's in the last bit)
        m = mask.astype(dtypes.compute_dtype(x.dtype)) * (1.0 / (1.0 - p))
        ctx.save(m, (None, 0), p)
        return threads.over_batch(_apply_numpy, x, m)

    @staticmethod
    def backward(ctx, dy):
        m, (key, first), p = ctx.saved
        if m is not None:
            return threads.over_batch(_apply_numpy, dy, m)
        # the same mask-apply as forward, on dy: the key regenerates the mask
        dx = dropout_apply_cuda(backend.xp("cuda").ascontiguousarray(dy), key, p, first)
        return dx.reshape(dy.shape)


def dropout(
    x: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False, *, mask=None, first=0
) -> Tensor:
    """Inverted dropout: zero each element with probability p and scale the rest by 1 / (1 - p).

    PyTorch's arguments; ``inplace``: the result is written into x's own array and x returned.
    Identity when ``training`` is False or p == 0. ``mask`` (same shape as x, 1 = keep) replaces
    the random draw, for gradient checks and teaching. ``first``: where x's first sample is in
    the global batch (data-parallel training: ``Batch.first`` of the DataLoader, passed on by
    ``nn.Dropout``; 0 in one process). The mask is counted from there, so each sample gets the
    mask one process would draw for it (docs/distributed.md).
    """
    require_tensor("dropout", "x", x)
    if inplace:
        y = dropout(x, p, training, mask=mask, first=first)
        return x if y is x else x._in_place(lambda _: y)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout: p must be a probability in [0, 1], got {p!r}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    if mask is not None:
        from minidl.tensor import Tensor

        mask = mask.data if isinstance(mask, Tensor) else mask
        mask = backend.move(mask, x.device)
        if tuple(mask.shape) != x.shape:
            raise ValueError(f"dropout: mask has shape {tuple(mask.shape)}, expected {x.shape}")
        return DropoutFunction.apply(x, p=float(p), key=None, mask=mask)
    # first sample -> first element: each sample holds x.numel() // x.shape[0] elements
    first = int(first) * (x.numel() // x.shape[0]) if x.ndim and x.shape[0] else 0
    return DropoutFunction.apply(x, p=float(p), key=mdl_random.next_key(), mask=None, first=first)
