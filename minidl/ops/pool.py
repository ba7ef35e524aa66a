"""2-D max-pooling, overlapping when stride < kernel (AlexNet: 3x3, stride 2; paper section 3.4).
docs/pool.md; the plain loop is max_pool2d in tests/reference.py.

    y[n, c, oy, ox] = max_{i < kh, j < kw} xpad[n, c, oy*sh + i*dh, ox*sw + j*dw]

with dilation (dh, dw) spacing the window's taps (1: a dense window).
Padding is implicit -inf (an integer tensor's smallest value): a padded cell never wins.
``argmax`` records, for every output, the flat index ``h * W + w`` of the winning input pixel
(PyTorch's ``return_indices`` layout); ties go to the first maximum in row-major window order (a
strict ``>`` while scanning i, then j).

Backward sends each output's gradient to its argmax:

    dx[n, c, h, w] = sum over the windows (oy, ox) containing (h, w) with argmax == h*W + w
                     of dy[n, c, oy, ox]

Windows overlap, so several outputs can send to one pixel. The CUDA kernel (``kernels/pool.cu``)
therefore gathers: one thread per input pixel visits the few windows that contain it, with no
atomics, so two runs give equal bits. The NumPy path scatters with ``np.bincount``, also exact
and deterministic.

Output size (PyTorch's rule): OH = floor((H + 2p - d*(k - 1) - 1) / s) + 1, or with ``ceil_mode``
the ceiling, dropping a last window that would start past the input and its left padding. The
geometry is one ``Window2d`` (``minidl/ops/window.py``, shared with conv2d), computed once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl.autograd import Function
from minidl.ops._checks import pair, require_tensor
from minidl.ops.window import Window2d

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def lowest(dtype):
    """What padding holds: -inf for floats, the smallest value for integers (never bigger than a
    real cell, and a tie with a real cell goes to the real cell; see the integer pass below)."""
    return -np.inf if dtypes.kind(dtype) == "f" else np.iinfo(dtype).min


def max_pool2d_forward_numpy(x, window: Window2d):
    """x: (N, C, H, W) -> y: (N, C, OH, OW), argmax: (N, C, OH, OW) int32 into H*W."""
    n, c, h, w = x.shape
    kh, kw, sh, sw, ph, pw, dh, dw, oh, ow = window
    pad_value = lowest(x.dtype)
    # (ph, pw) on the top and left; below and to the right what the last windows reach (ceil_mode
    # windows may reach past the padding)
    pb, pr = window.padding_after(h, w)
    xpad = x
    if ph or pw or pb or pr:
        xpad = np.pad(x, ((0, 0), (0, 0), (ph, pb), (pw, pr)), constant_values=pad_value)

    def tap(i, j):  # the (i, j) cell of every window: (N, C, OH, OW)
        return xpad[:, :, window.rows(i), window.columns(j)]

    # Tuned for speed (in-place passes, a sentinel); the plain loop: tests/reference.py::max_pool2d
    # Pass 1: the maximum, in place.
    y = np.full((n, c, oh, ow), pad_value, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            np.maximum(y, tap(i, j), out=y)
    # Pass 2: the first offset k = i * kw + j (row-major) whose cell holds the maximum, as the
    # minimum over k of (k where the cell equals y, else a sentinel). Arithmetic on the hit mask
    # is about three times faster than np.copyto(..., where=hit).
    sentinel = np.int16(kh * kw)
    first = np.full((n, c, oh, ow), sentinel, dtype=np.int16)
    top = (np.arange(oh, dtype=np.int32) * sh - ph)[:, None]  # window corners in the input
    left = (np.arange(ow, dtype=np.int32) * sw - pw)[None, :]
    integer = dtypes.kind(x.dtype) != "f"
    for k in range(kh * kw):
        i, j = divmod(k, kw)
        hit = tap(i, j) == y
        if integer:  # a padded cell ties with a real iinfo.min: only real cells may win
            hit &= (top + i * dh >= 0) & (top + i * dh < h) & (left + j * dw >= 0)
            hit &= left + j * dw < w
        np.minimum(first, hit * np.int16(k - sentinel) + sentinel, out=first)
    best = first.astype(np.int32)
    # Offset k of window (oy, ox) is its tap (i, j) = (k // kw, k % kw), input pixel
    # (oy*sh - ph + i*dh, ox*sw - pw + j*dw); without dilation the scaling is skipped (AlexNet).
    i, j = best // kw, best % kw
    if dh != 1 or dw != 1:
        i, j = i * dh, j * dw
    argmax = (top + i) * w + (left + j)
    # No winner: a window holding only -inf (padding, or -inf inputs), or a NaN maximum.
    if integer:
        argmax[first == sentinel] = -1  # cannot happen: every window holds a real cell
    else:
        argmax[(y == -np.inf) | (first == sentinel)] = -1
    return y, argmax


def max_pool2d_backward_numpy(dy, argmax, x_shape):
    """dy, argmax: (N, C, OH, OW) -> dx: (N, C, H, W)."""
    n, c, h, w = x_shape
    plane = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1, 1)
    target = (argmax + plane).ravel()
    valid = argmax.ravel() >= 0
    dx = np.bincount(target[valid], weights=dy.ravel()[valid], minlength=n * c * h * w)
    return dx.astype(dy.dtype).reshape(x_shape)


# ---- CUDA (kernels/pool.cu) ----------------------------------------------------------------------
def max_pool2d_forward_cuda(x, window: Window2d):
    """As max_pool2d_forward_numpy: one thread per output element."""
    n, c, h, w = x.shape
    xp = backend.xp("cuda")
    dtype = x.dtype
    x = xp.ascontiguousarray(x)
    if dtypes.kind(dtype) != "f":
        # The kernels are instantiated for float and double. Every integer up to 32 bits (and
        # int64 within +-2**53) is a double exactly, and a maximum of exact values is exact, so
        # the double kernel pools integers without rounding; y goes back to x's dtype.
        if x.dtype.itemsize == 8 and x.size and max(int(x.max()), -int(x.min())) > 2**53:
            raise TypeError(
                f"max_pool2d: on the GPU an {x.dtype} tensor is pooled as double, which holds "
                f"integers only up to 2**53 in magnitude; this one holds larger values"
            )
        x = x.astype(np.float64)
    y = xp.empty((n, c, window.oh, window.ow), dtype=x.dtype)
    argmax = xp.empty((n, c, window.oh, window.ow), dtype=np.int32)
    args = (x, y, argmax, cuda.i64(y.size), *cuda.i32(c, h, w, *window))
    cuda.launch_1d("pool", "max_pool2d_forward", x.dtype, y.size, args)
    return y.astype(dtype, copy=False), argmax


def max_pool2d_backward_cuda(dy, argmax, x_shape, window: Window2d):
    """As max_pool2d_backward_numpy, a gather: one thread per input pixel, no atomics."""
    n, c, h, w = x_shape
    xp = backend.xp("cuda")
    dy = xp.ascontiguousarray(dy)
    dx = xp.empty(x_shape, dtype=dy.dtype)
    args = (dy, argmax, dx, cuda.i64(dx.size), *cuda.i32(c, h, w, *window))
    cuda.launch_1d("pool", "max_pool2d_backward", dy.dtype, dx.size, args)
    return dx


# ---- autograd ------------------------------------------------------------------------------------
class MaxPool2dFunction(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, dilation, ceil_mode, indices=None):
        # x: (N, C, H, W) -> y: (N, C, OH, OW); ``indices``, a list, receives the argmax
        (ph, pw), (h, w) = padding, x.shape[2:]
        pads = (ph, ph, pw, pw)  # (top, bottom, left, right)
        window = Window2d.over(h, w, kernel_size, stride, pads, dilation, ceil_mode)
        if ctx.device == "cuda":
            y, argmax = max_pool2d_forward_cuda(x, window)
        else:  # the batch in parts on the thread pool (minidl/threads.py)
            y, argmax = threads.over_batch(lambda part: max_pool2d_forward_numpy(part, window), x)
        if indices is not None:
            indices.append(argmax)
        ctx.save(x.shape, argmax, window)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_shape, argmax, window = ctx.saved
        if ctx.device == "cuda":
            return max_pool2d_backward_cuda(dy, argmax, x_shape, window)
        return threads.over_batch(  # each part's planes: the same sums as the whole batch's
            lambda dy, argmax: max_pool2d_backward_numpy(dy, argmax, (len(dy), *x_shape[1:])),
            dy,
            argmax,
        )


def max_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Max-pooling over (H, W): x (N, C, H, W) -> (N, C, OH, OW), or unbatched (C, H, W) ->
    (C, OH, OW). ``stride`` defaults to kernel_size. Float or integer x (integers pad with the
    dtype's smallest value). With ``return_indices`` also returns the argmax as int64, the flat
    index h * W + w of each winner in its plane (PyTorch's layout, for max_unpool2d)."""
    require_tensor("max_pool2d", "x", x)
    if x.ndim == 3:  # unbatched (C, H, W), as PyTorch takes it: a batch of one
        out = max_pool2d(
            x.reshape(1, *x.shape), kernel_size, stride, padding, dilation, ceil_mode, True
        )
        y, indices = (t.reshape(t.shape[1:]) for t in out)
        return (y, indices) if return_indices else y
    require_tensor("max_pool2d", "x", x, ndim=4, layout="(N, C, H, W) (or unbatched (C, H, W))")
    if dtypes.kind(x.dtype) not in "fiu":
        raise TypeError(f"max_pool2d: x must hold floats or integers, got dtype {x.dtype}")
    kernel_size = pair("max_pool2d", "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("max_pool2d", "stride", stride, minimum=1)
    padding = pair("max_pool2d", "padding", padding, minimum=0)
    dilation = pair("max_pool2d", "dilation", dilation, minimum=1)
    h, w = x.shape[2:]
    for k, p, axis in zip(kernel_size, padding, "hw"):
        # PyTorch checks p <= k // 2 and p <= (effective kernel) // 2; with dilation >= 1 the
        # effective kernel d*(k - 1) + 1 is at least k, so the first rule is the one that binds
        if p > k // 2:
            raise ValueError(
                f"max_pool2d: padding {p} along {axis} must be at most half the kernel size {k}"
            )
    reach = [d * (k - 1) + 1 for k, d in zip(kernel_size, dilation)]
    if reach[0] > h + 2 * padding[0] or reach[1] > w + 2 * padding[1]:
        dilated = "" if dilation == (1, 1) else f" (dilated to {reach[0]}x{reach[1]})"
        raise ValueError(
            f"max_pool2d: kernel {kernel_size[0]}x{kernel_size[1]}{dilated} is larger than the "
            f"padded input {h + 2 * padding[0]}x{w + 2 * padding[1]}"
        )
    argmax = [] if return_indices else None
    y = MaxPool2dFunction.apply(
        x,
        kernel_size=kernel_size,
        stride=stride,
        padding=padding,
        dilation=dilation,
        ceil_mode=bool(ceil_mode),
        indices=argmax,
    )
    if not return_indices:
        return y
    from minidl.tensor import Tensor

    return y, Tensor._wrap(argmax[0].astype(np.int64), x.device, False)
