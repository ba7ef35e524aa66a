"""2-D convolution (cross-correlation, as every framework computes it): stride, padding,
dilation, groups (docs/conv.md; the plain loop is conv2d in tests/reference.py).

    y[n, o, oy, ox] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j]
                                 * xpad[n, c, oy*sh + i*dh, ox*sw + j*dw]

Dilation (dh, dw) spreads the kernel's taps dh rows apart: the effective kernel is
dh*(kh - 1) + 1 rows tall, and OH = (H + pad_top + pad_bottom - dh*(kh - 1) - 1) // sh + 1.
Padding is zeros: an int, an (h, w) pair, "valid" (none) or "same" (stride 1; the total
dh*(kh - 1) is split with the odd one out at the bottom/right, as PyTorch does).

Both paths lower it to GEMMs through im2col (Chellapilla et al. 2006). The columns are laid out
channels-first and batch-second, so that one GEMM per group covers the whole batch (large,
BLAS-friendly products instead of N small ones):

    cols[(c, i, j), (n, oy, ox)] = xpad[n, c, oy*sh + i*dh, ox*sw + j*dw]   im2col, (C*kh*kw, N*L)
    y[g] = w[g] @ cols[g]        per group g: (Og, K) @ (K, N*L), K = Cg*kh*kw, L = OH*OW

and backward is three products, with dy in the same (O, N*L) layout:

    db[o]  = sum_{n, oy, ox} dy[o, (n, oy, ox)]
    dw[g]  = dy[g] @ cols[g]^T
    dcols[g] = w[g]^T @ dy[g],   dx = col2im(dcols)   (each cols entry adds back to its pixel)

Each path is one forward and one backward with the same signatures (``conv2d_forward_numpy`` and
``conv2d_forward_cuda``, ``conv2d_backward_...``); the autograd Function picks one. The NumPy path
builds cols with a loop over the kh*kw window offsets (each a strided slice of a part of the batch);
the CUDA path runs ``kernels/conv.cu`` (im2col, col2im as a gather, bias add) and
``kernels/reduce.cu`` (bias gradient). The GEMMs are BLAS / cuBLAS on both. The window geometry
travels as one ``Window2d`` (``minidl/ops/window.py``, shared with max_pool2d).

cols is the largest array a convolution makes (AlexNet's conv2 at batch 128: 2400 x 93312 floats,
896 MB). ``IM2COL_WORKSPACE`` (off by default) bounds it: ``forward_in_blocks`` and
``backward_in_blocks`` then run the same path on blocks of whole images whose columns fit, dw and
db summed over blocks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, gemm, threads
from minidl.autograd import Function
from minidl.ops._checks import pair, require_tensor
from minidl.ops.reduce import channel_sum_cuda
from minidl.ops.window import Window2d

if TYPE_CHECKING:
    from minidl.tensor import Tensor


def same_padding(k: int, d: int) -> tuple[int, int]:
    """padding="same" (stride 1): the total d*(k - 1), the odd one out after (PyTorch's split)."""
    total = d * (k - 1)
    return total // 2, total - total // 2


# The most bytes of im2col columns one convolution holds at a time (dcols likewise), or None: no
# limit, the whole batch in one block (the default). A limit cuts the peak memory of training
# (AlexNet at batch 128: docs/conv.md, "Memory") but turns each GEMM into several narrower ones,
# whose speed on a GPU has not been measured yet. Set it here or with MINIDL_IM2COL_WORKSPACE_MB.
IM2COL_WORKSPACE: int | None = (
    int(float(os.environ["MINIDL_IM2COL_WORKSPACE_MB"]) * 2**20)
    if os.environ.get("MINIDL_IM2COL_WORKSPACE_MB")
    else None
)


def image_blocks(n: int, column_bytes_per_image: int) -> list[tuple[int, int]]:
    """The batch as [first, last) ranges of images whose columns fit ``IM2COL_WORKSPACE`` (at
    least one image a block); the whole batch at once without a limit."""
    if IM2COL_WORKSPACE is None or n == 0:
        return [(0, n)]
    per_block = max(1, IM2COL_WORKSPACE // max(1, column_bytes_per_image))
    return [(first, min(first + per_block, n)) for first in range(0, n, per_block)]


# ---- NumPy ---------------------------------------------------------------------------------------
# Tuned for speed (a loop over the kh*kw window offsets, each a strided slice of the images the
# thread pool gives it); the plain loop over every output pixel is conv2d in tests/reference.py.
def im2col_numpy(x, window: Window2d):
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), rows (c, i, j), columns (n, oy, ox).
    (ph, pw) pad the top and left; the bottom and right get what the last window reaches."""
    n, c, h, w = x.shape
    kh, kw, oh, ow = window.kh, window.kw, window.oh, window.ow
    xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W): each window offset is then one block of rows
    pb, pr = window.padding_after(h, w)
    if window.ph or window.pw or pb or pr:
        xt = np.pad(xt, ((0, 0), (0, 0), (window.ph, pb), (window.pw, pr)))
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for j in range(kw):  # column offset j's band (C, N, rows, OW) once, then kh long row copies
        band = np.ascontiguousarray(xt[:, :, :, window.columns(j)])
        for i in range(kh):
            cols[:, i, j] = band[:, :, window.rows(i)]
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im_numpy(dcols, x_shape, window: Window2d, out=None):
    """dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W); overlapping windows add up. ``out``: where
    to write dx (a block of a larger one), or None for a new array."""
    n, c, h, w = x_shape
    kh, kw, ph, pw = window.kh, window.kw, window.ph, window.pw
    dcols = dcols.reshape(c, kh, kw, n, window.oh, window.ow)
    pb, pr = window.padding_after(h, w)
    dxt = np.zeros((c, n, ph + h + pb, pw + w + pr), dtype=dcols.dtype)
    for j in range(kw):  # the kh taps summed first in a band (C, N, rows, OW): rows end to end
        band = np.zeros((c, n, ph + h + pb, window.ow), dtype=dcols.dtype)
        for i in range(kh):
            band[:, :, window.rows(i)] += dcols[:, i, j]
        dxt[:, :, :, window.columns(j)] += band
    dx = dxt[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)
    if out is None:
        return np.ascontiguousarray(dx)
    out[...] = dx
    return out


def conv2d_forward_numpy(x, w, b, window: Window2d, groups: int):
    """One block of images, x: (n, C, H, W) -> y: (n, O, OH, OW), a transposed view of the GEMM's
    (O, n*OH*OW), and the columns (G, K, n*OH*OW) that dw needs."""
    n, o = x.shape[0], w.shape[0]
    m = n * window.oh * window.ow  # one column per output pixel
    cols_g = im2col_numpy(x, window).reshape(groups, -1, m)
    y_t = dtypes.matmul(w.reshape(groups, o // groups, -1), cols_g).reshape(o, m)
    if b is not None:
        y_t += b[:, None]
    return y_t.reshape(o, n, window.oh, window.ow).transpose(1, 0, 2, 3), cols_g


def conv2d_backward_numpy(dy, w, cols_or_x, x_shape, window: Window2d, groups, needs, dx=None):
    """One block of images, dy: (n, O, OH, OW), and the columns forward kept (G, K, n*OH*OW), or
    x (n, C, H, W) to rebuild them from -> dx (into ``dx`` if given), dw, db; None where
    ``needs`` (x, w, b) is False."""
    n, o = dy.shape[:2]
    m = n * window.oh * window.ow
    dy_t = np.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, m)
    dy_g = dy_t.reshape(groups, o // groups, m)
    dw = db = None
    if needs[1]:  # dw[g] = dy[g] @ cols[g]^T
        if cols_or_x.ndim == 3:
            cols_g = cols_or_x
        else:
            cols_g = im2col_numpy(cols_or_x, window).reshape(groups, -1, m)
        dw = dtypes.matmul(dy_g, cols_g.transpose(0, 2, 1)).reshape(w.shape)
        del cols_g
    if needs[2]:
        db = dtypes.sum(dy_t, axis=1)
    if needs[0]:  # 16-bit: dcols and col2im's overlapping sums in float32 (dx rounded once)
        w_t = w.reshape(groups, o // groups, -1).transpose(0, 2, 1)
        dcols = np.matmul(dtypes.to_compute(w_t), dtypes.to_compute(dy_g))  # (G, K, m)
        del dy_t, dy_g  # dy's transposed copy is done with: not beside dx in col2im
        dx = col2im_numpy(dcols.reshape(-1, m), x_shape, window, out=dx)
    return dx, dw, db


# ---- CUDA (kernels/conv.cu) ----------------------------------------------------------------------
def im2col_cuda(x, window: Window2d):
    """As im2col_numpy; x C-contiguous."""
    n, c, h, w = x.shape
    m = n * window.oh * window.ow
    if m >= 2**31:  # the kernels index a row of cols with 32-bit integers
        raise ValueError(f"conv2d: N*OH*OW = {m} is too large for the GPU kernels")
    cols = backend.xp("cuda").empty((c * window.kh * window.kw, m), dtype=x.dtype)
    windows = c * m  # one thread per (channel, output pixel)
    args = (x, cols, cuda.i64(windows), *cuda.i32(n, c, h, w, *window))
    cuda.launch_1d("conv", "im2col", x.dtype, windows, args)
    return cols


def col2im_cuda(dcols, x_shape, window: Window2d, out=None):
    """As col2im_numpy, a gather: one thread per input pixel; ``out`` C-contiguous."""
    dx = backend.xp("cuda").empty(x_shape, dtype=dcols.dtype) if out is None else out
    args = (dcols, dx, cuda.i64(dx.size), *cuda.i32(*x_shape, *window))
    cuda.launch_1d("conv", "col2im", dx.dtype, dx.size, args)
    return dx


def bias_add_cuda(y, b):
    """In place: y[o, :] += b[o] for y: (O, M)."""
    args = (y, b, cuda.i64(y.size), *cuda.i32(y.shape[0], y.shape[1]))
    cuda.launch_1d("conv", "bias_add", y.dtype, y.size, args)


def conv2d_forward_cuda(x, w, b, window: Window2d, groups: int):
    """One block of images, x: (n, C, H, W) -> y: (n, O, OH, OW), a transposed view of the GEMM's
    (O, n*OH*OW), and x (C-contiguous), from which backward rebuilds the columns for dw."""
    n, o = x.shape[0], w.shape[0]
    m = n * window.oh * window.ow  # one column per output pixel
    x = backend.xp("cuda").ascontiguousarray(x)
    cols_g = im2col_cuda(x, window).reshape(groups, -1, m)
    y_t = dtypes.matmul(w.reshape(groups, o // groups, -1), cols_g).reshape(o, m)
    # let the columns go before y is made: the whole batch's columns never sit beside y's NCHW
    # copy (conv2 at batch 128: 896 MB of columns, 96 MB of y)
    del cols_g
    if b is not None:
        bias_add_cuda(y_t, b)
    return y_t.reshape(o, n, window.oh, window.ow).transpose(1, 0, 2, 3), x


def conv2d_backward_cuda(dy, w, x, x_shape, window: Window2d, groups: int, needs, dx=None):
    """One block of images, dy: (n, O, OH, OW), x: (n, C, H, W) -> dx (into ``dx`` if given),
    dw, db; None where ``needs`` (x, w, b) is False."""
    n, o = dy.shape[:2]
    m = n * window.oh * window.ow
    xp = backend.xp("cuda")
    dy_t = xp.ascontiguousarray(dy.transpose(1, 0, 2, 3)).reshape(o, m)
    dy_g = dy_t.reshape(groups, o // groups, m)
    dw = db = None
    if needs[1]:
        # dw[g] = dy[g] @ cols[g]^T: a long inner dimension n*L and a small output, which the GPU
        # computes in slices of n*L (split-K) to keep every multiprocessor busy
        cols_g = im2col_cuda(xp.ascontiguousarray(x), window).reshape(groups, -1, m)
        dw = gemm.matmul_nt_split_k(dy_g, cols_g).reshape(w.shape)
        # freed before dx's GEMM makes dcols, as large (896 MB for conv2 at batch 128): the pool
        # hands the same block back instead of holding both
        del cols_g
    if needs[2]:
        db = channel_sum_cuda(dy_t[None])
    if needs[0]:  # 16-bit dcols; col2im.cu sums its overlaps in float, rounds once
        dcols = dtypes.matmul(w.reshape(groups, o // groups, -1).transpose(0, 2, 1), dy_g)
        del dy_t, dy_g  # dy's transposed copy is done with: not beside dx in col2im
        dx = col2im_cuda(dcols.reshape(-1, m), x_shape, window, out=dx)
    return dx, dw, db


# ---- autograd ------------------------------------------------------------------------------------
class Conv2dFunction(Function):
    dtype_kinds = "f"  # PyTorch refuses integer tensors here too

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        # x: (N, C, H, W), w: (O, C/G, kh, kw), b: (O,) or None -> y: (N, O, OH, OW)
        # padding: (top, bottom, left, right)
        forward = conv2d_forward_cuda if ctx.device == "cuda" else conv2d_forward_numpy
        xp = backend.xp(ctx.device)
        n, c, h, wd = x.shape
        window = Window2d.over(h, wd, w.shape[2:], stride, padding, dilation)
        column_bytes = c * window.kh * window.kw * window.oh * window.ow * x.dtype.itemsize
        blocks = image_blocks(n, column_bytes)  # one, the whole batch, unless IM2COL_WORKSPACE
        if len(blocks) > 1:
            y = forward_in_blocks(forward, xp, x, w, b, window, groups, blocks)
            ctx.save(x.shape, w, x, window, groups, blocks)
            return y
        # dw needs the columns again. The CPU keeps them (rebuilding them would add about a tenth
        # to AlexNet's step); the GPU keeps x and rebuilds them in backward, as Caffe does: on an
        # H100 at batch 128, AlexNet's step took 0.5 ms longer (23.4 ms) and 1.2 GB less memory.
        if ctx.device != "cuda":  # the CPU: the batch in parts on the thread pool, columns per part
            parts = threads.parts(n, column_bytes * n)  # by the columns: the work, not x's size
            y, cols = threads.over_batch(
                lambda x_part: forward(x_part, w, b, window, groups),
                x,
                combine=("join", "list"),
                nbytes=column_bytes * n,
            )
            ctx.save(x.shape, w, cols, window, groups, parts)
            return np.ascontiguousarray(y)
        y, cols_or_x = forward(x, w, b, window, groups)
        ctx.save(x.shape, w, cols_or_x, window, groups, blocks)
        return xp.ascontiguousarray(y)

    @staticmethod
    def backward(ctx, dy):
        x_shape, w, cols_or_x, window, groups, blocks = ctx.saved
        backward = conv2d_backward_cuda if ctx.device == "cuda" else conv2d_backward_numpy
        xp = backend.xp(ctx.device)
        needs = ctx.needs_input_grad  # (x, w, b)
        if ctx.device != "cuda" and isinstance(cols_or_x, list):  # the CPU's parts (forward)
            return backward_in_parts(dy, w, cols_or_x, x_shape, window, groups, needs, blocks)
        if len(blocks) > 1:
            return backward_in_blocks(backward, xp, dy, w, cols_or_x, window, groups, needs, blocks)
        return backward(dy, w, cols_or_x, x_shape, window, groups, needs)


def forward_in_blocks(forward, xp, x, w, b, window: Window2d, groups: int, blocks):
    """conv2d under IM2COL_WORKSPACE: ``forward`` on each block of images in turn, each block's
    columns let go before the next block's are made (backward rebuilds them from x)."""
    y = None
    for first, last in blocks:
        y_block = forward(x[first:last], w, b, window, groups)[0]  # the columns go here
        if y is None:
            y = xp.empty((x.shape[0], *y_block.shape[1:]), dtype=y_block.dtype)
        y[first:last] = y_block
        del y_block  # not beside the next block's columns
    return y


def backward_in_blocks(backward, xp, dy, w, x, window: Window2d, groups: int, needs, blocks):
    """conv2d's backward under IM2COL_WORKSPACE: ``backward`` on each block of images in turn,
    writing its dx in place, dw and db summed over the blocks."""
    dx = dw = db = None
    for first, last in blocks:
        x_block = x[first:last]
        out = None if dx is None else dx[first:last]  # None: the first block's dx gives the dtype
        dx_block, dw_block, db_block = backward(
            dy[first:last], w, x_block, x_block.shape, window, groups, needs, out
        )
        if dx is None and dx_block is not None:
            dx = xp.empty(x.shape, dtype=dx_block.dtype)
            dx[first:last] = dx_block
        dw = dw_block if dw is None else dw + dw_block
        db = db_block if db is None else db + db_block
        del dx_block, dw_block, db_block  # not beside the next block's columns
    return dx, dw, db


def backward_in_parts(dy, w, cols, x_shape, window: Window2d, groups: int, needs, parts):
    """The CPU's backward, on the thread pool: each part of the batch (its columns from forward)
    writes its rows of dx; dw and db are summed in part order (the same bits for any thread
    count, minidl/threads.py)."""
    dx = None
    if needs[0]:  # col2im's dtype: float32 for 16-bit operands
        dx = np.empty(x_shape, np.result_type(*(dtypes.compute_dtype(a.dtype) for a in (dy, w))))

    def part(i):
        rows = parts[i]
        shape = (rows.stop - rows.start, *x_shape[1:])
        out = None if dx is None else dx[rows]
        return conv2d_backward_numpy(dy[rows], w, cols[i], shape, window, groups, needs, out)[1:]

    grads = threads.map_parts(part, range(len(parts)))
    dw, db = ([g[k] for g in grads] for k in (0, 1))
    return dx, threads.sum_in_order(dw), threads.sum_in_order(db)


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution. x: (N, C, H, W) or unbatched (C, H, W), weight: (O, C // groups, kh, kw),
    bias: (O,). Returns (N, O, OH, OW), or (O, OH, OW) for an unbatched x, with
    OH = (H + 2*pad_h - dilation_h*(kh - 1) - 1) // stride_h + 1.

    ``stride``, ``padding`` and ``dilation`` are an int or an (h, w) pair; ``padding`` may also
    be "valid" (no padding) or "same" (output the size of the input; stride 1 only).
    """
    require_tensor("conv2d", "x", x)
    if x.ndim == 3:  # unbatched (C, H, W), as PyTorch takes it: a batch of one
        y = conv2d(x.reshape(1, *x.shape), weight, bias, stride, padding, dilation, groups)
        return y.reshape(y.shape[1:])
    require_tensor("conv2d", "x", x, ndim=4, layout="(N, C, H, W) (or unbatched (C, H, W))")
    require_tensor("conv2d", "weight", weight, ndim=4, layout="(out, in // groups, kh, kw)")
    stride = pair("conv2d", "stride", stride, minimum=1)
    dilation = pair("conv2d", "dilation", dilation, minimum=1)
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive integer, got {groups!r}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    pads = _paddings(padding, stride, dilation, (kh, kw))  # (top, bottom, left, right)
    if c % groups:
        raise ValueError(f"conv2d: input channels {c} are not divisible by groups={groups}")
    if o % groups:
        raise ValueError(f"conv2d: output channels {o} are not divisible by groups={groups}")
    if cg != c // groups:
        raise ValueError(
            f"conv2d: weight has {cg} input channels per group, expected C // groups = "
            f"{c} // {groups} = {c // groups} (x: {x.shape}, weight: {weight.shape})"
        )
    reach_h, reach_w = dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1
    padded_h, padded_w = h + pads[0] + pads[1], w + pads[2] + pads[3]
    if reach_h > padded_h or reach_w > padded_w:
        dilated = "" if dilation == (1, 1) else f" (dilated to {reach_h}x{reach_w})"
        raise ValueError(
            f"conv2d: kernel {kh}x{kw}{dilated} is larger than the padded input "
            f"{padded_h}x{padded_w}"
        )
    if bias is not None:
        require_tensor("conv2d", "bias", bias, ndim=1, layout="(out,)")
        if bias.shape[0] != o:
            raise ValueError(f"conv2d: bias has shape {bias.shape}, expected ({o},)")
    return Conv2dFunction.apply(
        x, weight, bias, stride=stride, padding=pads, dilation=dilation, groups=int(groups)
    )


def _paddings(padding, stride, dilation, kernel) -> tuple[int, int, int, int]:
    """conv2d's ``padding`` argument as (top, bottom, left, right)."""
    if isinstance(padding, str):
        if padding == "valid":
            return 0, 0, 0, 0
        if padding != "same":
            raise ValueError(
                f"conv2d: padding must be an int, an (h, w) pair, 'valid' or 'same', "
                f"got {padding!r}"
            )
        if stride != (1, 1):
            raise ValueError(
                f"conv2d: padding='same' needs stride 1 (as in PyTorch), got stride={stride}"
            )
        (kh, kw), (dh, dw) = kernel, dilation
        return (*same_padding(kh, dh), *same_padding(kw, dw))
    ph, pw = pair("conv2d", "padding", padding, minimum=0)
    return ph, ph, pw, pw
