"""2-D max-pooling, overlapping when stride < kernel (AlexNet: 3x3, stride 2; paper section 3.4).

    y[n, c, oy, ox] = max_{i < kh, j < kw} xpad[n, c, oy*sh + i, ox*sw + j]

Padding is implicit -inf: a padded cell never wins. ``argmax`` records, for every output, the
flat index ``h * W + w`` of the winning input pixel (PyTorch's ``return_indices`` layout); ties
go to the first maximum in row-major window order (a strict ``>`` while scanning i, then j).

Backward sends each output's gradient to its argmax:

    dx[n, c, h, w] = sum over the windows (oy, ox) containing (h, w) with argmax == h*W + w
                     of dy[n, c, oy, ox]

Windows overlap, so several outputs can send to one pixel. The CUDA kernel (``kernels/pool.cu``)
therefore gathers: one thread per input pixel visits the few windows that contain it, with no
atomics, so two runs give equal bits. The NumPy path scatters with ``np.bincount``, also exact
and deterministic.

Output size (PyTorch's rule): OH = floor((H + 2p - k) / s) + 1, or with ``ceil_mode`` the ceiling,
dropping a last window that would start past the input and its left padding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda
from minidl.autograd import Function
from minidl.ops._checks import pair, require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


def pool_output_size(size: int, k: int, s: int, p: int, ceil_mode: bool) -> int:
    span = size + 2 * p - k
    out = (span + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or its left padding
    return out


# ---- NumPy ---------------------------------------------------------------------------------------
def max_pool2d_forward_numpy(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """x: (N, C, H, W) -> y: (N, C, OH, OW), argmax: (N, C, OH, OW) int32 into H*W."""
    n, c, h, w = x.shape
    # -inf padding on every side; ceil_mode windows may reach past the right/bottom padding.
    extra_h = max(0, (oh - 1) * sh + kh - (h + 2 * ph))
    extra_w = max(0, (ow - 1) * sw + kw - (w + 2 * pw))
    xpad = x
    if ph or pw or extra_h or extra_w:
        padding = ((0, 0), (0, 0), (ph, ph + extra_h), (pw, pw + extra_w))
        xpad = np.pad(x, padding, constant_values=-np.inf)

    def window(i, j):  # the (i, j) cell of every window: (N, C, OH, OW)
        return xpad[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]

    # Tuned for speed (in-place passes, a sentinel); the plain loop: tests/reference.py::max_pool2d
    # Pass 1: the maximum, in place.
    y = np.full((n, c, oh, ow), -np.inf, dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            np.maximum(y, window(i, j), out=y)
    # Pass 2: the first offset k = i * kw + j (row-major) whose cell holds the maximum, as the
    # minimum over k of (k where the cell equals y, else a sentinel). Arithmetic on the hit mask
    # is about three times faster than np.copyto(..., where=hit).
    sentinel = np.int16(kh * kw)
    first = np.full((n, c, oh, ow), sentinel, dtype=np.int16)
    for k in range(kh * kw):
        hit = window(*divmod(k, kw)) == y
        np.minimum(first, hit * np.int16(k - sentinel) + sentinel, out=first)
    best = first.astype(np.int32)
    # Offset k of window (oy, ox) is input pixel (oy*sh - ph + k // kw, ox*sw - pw + k % kw).
    top = (np.arange(oh, dtype=np.int32) * sh - ph)[:, None]
    left = (np.arange(ow, dtype=np.int32) * sw - pw)[None, :]
    argmax = (top + best // kw) * w + (left + best % kw)
    # No winner: a window holding only -inf (padding, or -inf inputs), or a NaN maximum.
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
def max_pool2d_forward_cuda(x, kh, kw, sh, sw, ph, pw, oh, ow):
    n, c, h, w = x.shape
    xp = backend.xp("cuda")
    y = xp.empty((n, c, oh, ow), dtype=x.dtype)
    argmax = xp.empty((n, c, oh, ow), dtype=np.int32)
    cuda.launch(
        "pool",
        "max_pool2d_forward",
        x.dtype,
        cuda.grid_for(y.size),
        (cuda.THREADS,),
        (x, y, argmax, cuda.i64(y.size), *cuda.i32(c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)),
    )
    return y, argmax


def max_pool2d_backward_cuda(dy, argmax, x_shape, kh, kw, sh, sw, ph, pw, oh, ow):
    n, c, h, w = x_shape
    dx = backend.xp("cuda").empty(x_shape, dtype=dy.dtype)
    cuda.launch(
        "pool",
        "max_pool2d_backward",
        dy.dtype,
        cuda.grid_for(dx.size),
        (cuda.THREADS,),
        (dy, argmax, dx, cuda.i64(dx.size), *cuda.i32(c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)),
    )
    return dx


# ---- autograd ------------------------------------------------------------------------------------
class MaxPool2dFunction(Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode):
        # x: (N, C, H, W) -> y: (N, C, OH, OW)
        (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
        h, w = x.shape[2:]
        oh = pool_output_size(h, kh, sh, ph, ceil_mode)
        ow = pool_output_size(w, kw, sw, pw, ceil_mode)
        geometry = (kh, kw, sh, sw, ph, pw, oh, ow)
        if ctx.device == "cuda":
            x = backend.xp("cuda").ascontiguousarray(x)
            y, argmax = max_pool2d_forward_cuda(x, *geometry)
        else:
            y, argmax = max_pool2d_forward_numpy(x, *geometry)
        ctx.save(x.shape, argmax, geometry)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_shape, argmax, geometry = ctx.saved
        if ctx.device == "cuda":
            dy = backend.xp("cuda").ascontiguousarray(dy)
            return max_pool2d_backward_cuda(dy, argmax, x_shape, *geometry)
        return max_pool2d_backward_numpy(dy, argmax, x_shape)


def max_pool2d(
    x: Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
) -> Tensor:
    """Max-pooling over (H, W): x (N, C, H, W) -> (N, C, OH, OW); stride defaults to kernel_size."""
    require_tensor("max_pool2d", "x", x, ndim=4, layout="(N, C, H, W)")
    kernel_size = pair("max_pool2d", "kernel_size", kernel_size, minimum=1)
    stride = kernel_size if stride is None else pair("max_pool2d", "stride", stride, minimum=1)
    padding = pair("max_pool2d", "padding", padding, minimum=0)
    h, w = x.shape[2:]
    for k, p, axis in zip(kernel_size, padding, "hw"):
        if p > k // 2:
            raise ValueError(
                f"max_pool2d: padding {p} along {axis} must be at most half the kernel size {k}"
            )
    if kernel_size[0] > h + 2 * padding[0] or kernel_size[1] > w + 2 * padding[1]:
        raise ValueError(
            f"max_pool2d: kernel {kernel_size[0]}x{kernel_size[1]} is larger than the padded "
            f"input {h + 2 * padding[0]}x{w + 2 * padding[1]}"
        )
    return MaxPool2dFunction.apply(
        x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=bool(ceil_mode)
    )
