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

The NumPy path builds cols with a loop over the kh*kw window offsets (each one strided slice of
the whole batch); the CUDA path runs ``kernels/conv.cu`` (im2col, col2im as a gather, bias add,
bias gradient). The GEMMs and the (N, O) <-> (O, N) transposes are BLAS / cuBLAS and array glue
through ``xp`` on both.

cols is the largest array a convolution makes (AlexNet's conv2 at batch 128: 2400 x 93312 floats,
896 MB). ``IM2COL_WORKSPACE`` (off by default) bounds it: the batch is then lowered in blocks of
whole images whose columns fit, the same three products per block, dw and db summed over blocks.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, gemm
from minidl.autograd import Function
from minidl.ops._checks import pair, require_tensor
from minidl.ops.reduce import channel_sum_cuda

if TYPE_CHECKING:
    from minidl.tensor import Tensor


def conv_output_size(size: int, k: int, s: int, pad_before: int, pad_after: int, d: int) -> int:
    return (size + pad_before + pad_after - d * (k - 1) - 1) // s + 1


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
def _padding_after(size, k, s, pad, d, out):
    """Padding the last window needs past the input: pad for symmetric padding or less, more
    for "same" with an even effective kernel (the extra cell sits at the bottom/right)."""
    return max(0, (out - 1) * s + d * (k - 1) + 1 - size - pad)


def im2col_numpy(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), rows (c, i, j), columns (n, oy, ox).
    (ph, pw) pad the top and left; the bottom and right get what the last window reaches."""
    n, c, h, w = x.shape
    xt = x.transpose(1, 0, 2, 3)  # (C, N, H, W): each window offset is then one block of rows
    pb, pr = _padding_after(h, kh, sh, ph, dh, oh), _padding_after(w, kw, sw, pw, dw, ow)
    if ph or pw or pb or pr:
        xt = np.pad(xt, ((0, 0), (0, 0), (ph, pb), (pw, pr)))
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        top = i * dh
        for j in range(kw):
            left = j * dw
            cols[:, i, j] = xt[
                :, :, top : top + sh * (oh - 1) + 1 : sh, left : left + sw * (ow - 1) + 1 : sw
            ]
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im_numpy(dcols, x_shape, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    """dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W); overlapping windows add up."""
    n, c, h, w = x_shape
    dcols = dcols.reshape(c, kh, kw, n, oh, ow)
    pb, pr = _padding_after(h, kh, sh, ph, dh, oh), _padding_after(w, kw, sw, pw, dw, ow)
    dxt = np.zeros((c, n, ph + h + pb, pw + w + pr), dtype=dcols.dtype)
    for i in range(kh):
        top = i * dh
        for j in range(kw):
            left = j * dw
            rows = slice(top, top + sh * (oh - 1) + 1, sh)
            columns = slice(left, left + sw * (ow - 1) + 1, sw)
            dxt[:, :, rows, columns] += dcols[:, i, j]
    return dxt[:, :, ph : ph + h, pw : pw + w].transpose(1, 0, 2, 3)


# ---- CUDA (kernels/conv.cu) ----------------------------------------------------------------------
def im2col_cuda(x, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow):
    n, c, h, w = x.shape
    if n * oh * ow >= 2**31:  # the kernels index a row of cols with 32-bit integers
        raise ValueError(f"conv2d: N*OH*OW = {n * oh * ow} is too large for the GPU kernels")
    cols = backend.xp("cuda").empty((c * kh * kw, n * oh * ow), dtype=x.dtype)
    windows = c * n * oh * ow  # one thread per (channel, output pixel)
    cuda.launch(
        "conv",
        "im2col",
        x.dtype,
        cuda.grid_for(windows),
        (cuda.THREADS,),
        (x, cols, cuda.i64(windows), *cuda.i32(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)),
    )
    return cols


def col2im_cuda(dcols, x_shape, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow, out=None):
    """``out``: a C-contiguous array of x_shape to write into (one block of a larger dx)."""
    n, c, h, w = x_shape
    dx = backend.xp("cuda").empty(x_shape, dtype=dcols.dtype) if out is None else out
    cuda.launch(
        "conv",
        "col2im",
        dx.dtype,
        cuda.grid_for(dx.size),
        (cuda.THREADS,),
        (
            dcols,
            dx,
            cuda.i64(dx.size),
            *cuda.i32(n, c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, oh, ow),
        ),
    )
    return dx


def bias_add_cuda(y, b):
    """In place: y[o, :] += b[o] for y: (O, M)."""
    cuda.launch(
        "conv",
        "bias_add",
        y.dtype,
        cuda.grid_for(y.size),
        (cuda.THREADS,),
        (y, b, cuda.i64(y.size), *cuda.i32(y.shape[0], y.shape[1])),
    )


# ---- autograd ------------------------------------------------------------------------------------
class Conv2dFunction(Function):
    dtype_kinds = "f"  # PyTorch refuses integer tensors here too

    @staticmethod
    def forward(ctx, x, w, b, stride, padding, dilation, groups):
        # x: (N, C, H, W), w: (O, C/G, kh, kw), b: (O,) or None -> y: (N, O, OH, OW)
        # padding: (top, bottom, left, right)
        on_gpu = ctx.device == "cuda"
        xp = backend.xp(ctx.device)
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        (sh, sw), (dh, dw) = stride, dilation
        ph, pb, pw, pr = padding
        oh = conv_output_size(h, kh, sh, ph, pb, dh)
        ow = conv_output_size(wd, kw, sw, pw, pr, dw)
        geometry = (kh, kw, sh, sw, ph, pw, dh, dw, oh, ow)
        if on_gpu:
            x = xp.ascontiguousarray(x)
        im2col = im2col_cuda if on_gpu else im2col_numpy
        k = cg * kh * kw
        w_g = w.reshape(groups, o // groups, k)
        # One block, the whole batch, unless IM2COL_WORKSPACE bounds the columns
        blocks = image_blocks(n, c * kh * kw * oh * ow * x.dtype.itemsize)
        # dw needs the columns again. The CPU keeps them (rebuilding them would add about a tenth
        # to AlexNet's step); the GPU keeps x and rebuilds them in backward, as Caffe does: on an
        # H100 at batch 128, AlexNet's step took 0.5 ms longer (23.4 ms) and 1.2 GB less memory.
        # Blocks rebuild them too: keeping every block's columns would undo the bound.
        keep_columns = not on_gpu and len(blocks) == 1
        saved = x
        y = None
        for first, last in blocks:
            m = (last - first) * oh * ow  # one column per output pixel of these images
            cols_g = im2col(x[first:last], *geometry).reshape(groups, k, m)
            y_t = dtypes.matmul(w_g, cols_g).reshape(o, m)  # (G, Og, m) is (O, m)
            if keep_columns:
                saved = cols_g
            # let the columns go before y is made: in one block, the whole batch's columns never
            # sit beside y (conv2 at batch 128: 896 MB of columns, 96 MB of y)
            del cols_g
            if b is not None:
                if on_gpu:
                    bias_add_cuda(y_t, b)
                else:
                    y_t += b[:, None]
            if y is None:
                y = xp.empty((n, o, oh, ow), dtype=y_t.dtype)
            y[first:last] = y_t.reshape(o, last - first, oh, ow).transpose(1, 0, 2, 3)
            del y_t
        ctx.save(x.shape, w, saved, geometry, groups, b is not None, blocks)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_shape, w, x_or_cols, geometry, groups, has_bias, blocks = ctx.saved
        on_gpu = ctx.device == "cuda"
        xp = backend.xp(ctx.device)
        n, o, oh, ow = dy.shape
        k = w.shape[1] * w.shape[2] * w.shape[3]  # C/G * kh * kw
        w_g = w.reshape(groups, o // groups, k)
        columns_kept = x_or_cols.ndim == 3  # (G, K, N*L) columns, or x (N, C, H, W)
        dx = dw = db = None
        for first, last in blocks:
            m = (last - first) * oh * ow
            dy_t = xp.ascontiguousarray(dy[first:last].transpose(1, 0, 2, 3)).reshape(o, m)
            dy_g = dy_t.reshape(groups, o // groups, m)
            if ctx.needs_input_grad[1]:
                # dw[g] = dy[g] @ cols[g]^T: a long inner dimension N*L and a small output, which
                # the GPU computes in slices of N*L (split-K) to keep every multiprocessor busy
                if columns_kept:
                    part = dtypes.matmul(dy_g, x_or_cols.transpose(0, 2, 1))
                else:
                    im2col = im2col_cuda if on_gpu else im2col_numpy
                    cols_g = im2col(x_or_cols[first:last], *geometry).reshape(groups, k, m)
                    if on_gpu:
                        part = gemm.matmul_nt_split_k(dy_g, cols_g)
                    else:
                        part = dtypes.matmul(dy_g, cols_g.transpose(0, 2, 1))
                    # freed before dx's GEMM makes dcols, as large (896 MB for conv2 at batch
                    # 128): the pool hands the same block back instead of holding both
                    del cols_g
                dw = part if dw is None else dw + part
            if has_bias and ctx.needs_input_grad[2]:
                part = channel_sum_cuda(dy_t[None]) if on_gpu else dtypes.sum(dy_t, axis=1)
                db = part if db is None else db + part
            if ctx.needs_input_grad[0]:
                if on_gpu:  # 16-bit dcols; col2im.cu sums its overlaps in float, rounds once
                    dcols = dtypes.matmul(w_g.transpose(0, 2, 1), dy_g)  # (G, K, m)
                else:  # 16-bit: dcols and col2im's overlapping sums in float32 (dx rounded once)
                    acc = dtypes.compute_dtype(dy.dtype)
                    dcols = np.matmul(w_g.transpose(0, 2, 1).astype(acc, copy=False),
                                      dy_g.astype(acc, copy=False))  # fmt: skip
                dcols = dcols.reshape(groups * k, m)
                del dy_t, dy_g  # dy's transposed copy is done with: not beside dx in col2im
                if dx is None:
                    dx = xp.empty(x_shape, dtype=dcols.dtype)
                block = (last - first, *x_shape[1:])
                if on_gpu:
                    col2im_cuda(dcols, block, *geometry, out=dx[first:last])
                else:
                    dx[first:last] = col2im_numpy(dcols, block, *geometry)
                del dcols
        return dx, None if dw is None else dw.reshape(w.shape), db


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
