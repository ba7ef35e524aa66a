"""2-D convolution (cross-correlation, as every framework computes it), with stride, padding, groups.

    y[n, o, oy, ox] = b[o] + sum_{c in group(o), i, j} w[o, c, i, j] * xpad[n, c, oy*sh + i, ox*sw + j]

Both paths lower it to a GEMM through im2col (Krizhevsky et al. 2012, section 3, trained the
same layers with cuda-convnet; Chellapilla et al. 2006 for im2col):

    cols[n, (c, i, j), (oy, ox)] = xpad[n, c, oy*sh + i, ox*sw + j]        im2col
    y[n, g] = w[g] @ cols[n, g]             (per group g: (Og, K) @ (K, L), K = Cg*kh*kw, L = OH*OW)

and backward is three products:

    db[o]     = sum_{n, oy, ox} dy[n, o, oy, ox]
    dw[g]     = sum_n dy[n, g] @ cols[n, g]^T
    dcols[n,g] = w[g]^T @ dy[n, g],    dx = col2im(dcols)  (each cols entry adds back to its pixel)

The NumPy path builds cols with a loop over the kh*kw window offsets (each a strided slice of the
whole batch); the CUDA path runs ``kernels/conv.cu`` (im2col, col2im as a gather, bias add, bias
gradient). The GEMMs go to BLAS / cuBLAS through ``xp.matmul`` on both.
"""

from __future__ import annotations

import numpy as np

from minidl import backend, cuda
from minidl.autograd import Function
from minidl.ops._checks import pair, require_tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def im2col_numpy(x, kh, kw, sh, sw, ph, pw, oh, ow):
    """x: (N, C, H, W) -> cols: (N, C*kh*kw, OH*OW), rows ordered (c, i, j) like w.reshape."""
    n, c = x.shape[:2]
    xpad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
    cols = np.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw]
    return cols.reshape(n, c * kh * kw, oh * ow)


def col2im_numpy(dcols, x_shape, kh, kw, sh, sw, ph, pw, oh, ow):
    """dcols: (N, C*kh*kw, OH*OW) -> dx: (N, C, H, W); overlapping windows add up."""
    n, c, h, w = x_shape
    dcols = dcols.reshape(n, c, kh, kw, oh, ow)
    dxpad = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += dcols[:, :, i, j]
    return dxpad[:, :, ph : ph + h, pw : pw + w]


# ---- CUDA (kernels/conv.cu) ------------------------------------------------------------------------
def im2col_cuda(x, kh, kw, sh, sw, ph, pw, oh, ow):
    n, c, h, w = x.shape
    xp = backend.xp("cuda")
    cols = xp.empty((n, c * kh * kw, oh * ow), dtype=x.dtype)
    total = cols.size
    cuda.launch(
        "conv", "im2col", x.dtype, cuda.grid_for(total), (cuda.THREADS,),
        (x, cols, cuda.i64(total), *cuda.i32(c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)),
    )
    return cols


def col2im_cuda(dcols, x_shape, kh, kw, sh, sw, ph, pw, oh, ow):
    n, c, h, w = x_shape
    xp = backend.xp("cuda")
    dx = xp.empty(x_shape, dtype=dcols.dtype)
    total = dx.size
    cuda.launch(
        "conv", "col2im", dx.dtype, cuda.grid_for(total), (cuda.THREADS,),
        (dcols, dx, cuda.i64(total), *cuda.i32(c, h, w, kh, kw, sh, sw, ph, pw, oh, ow)),
    )
    return dx


def bias_add_cuda(y, b):
    """In place: y[n, o, :, :] += b[o]."""
    n, o = y.shape[:2]
    plane = int(np.prod(y.shape[2:]))
    cuda.launch(
        "conv", "bias_add", y.dtype, cuda.grid_for(y.size), (cuda.THREADS,),
        (y, b, cuda.i64(y.size), *cuda.i32(o, plane)),
    )


def bias_grad_cuda(dy):
    """dy: (N, O, ...) -> db: (O,), one block per channel, a shared-memory tree reduction."""
    n, o = dy.shape[:2]
    plane = int(np.prod(dy.shape[2:]))
    db = backend.xp("cuda").empty((o,), dtype=dy.dtype)
    cuda.launch(
        "conv", "bias_grad", dy.dtype, (o,), (cuda.REDUCE_THREADS,),
        (dy, db, *cuda.i32(n, o, plane)),
    )
    return db


# ---- autograd ------------------------------------------------------------------------------------
class Conv2d(Function):
    @staticmethod
    def forward(ctx, x, w, b, stride, padding, groups):
        # x: (N, C, H, W), w: (O, C/G, kh, kw), b: (O,) or None -> y: (N, O, OH, OW)
        on_gpu = ctx.device == "cuda"
        xp = backend.xp(ctx.device)
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        (sh, sw), (ph, pw) = stride, padding
        oh = (h + 2 * ph - kh) // sh + 1
        ow = (wd + 2 * pw - kw) // sw + 1
        geometry = (kh, kw, sh, sw, ph, pw, oh, ow)
        x = xp.ascontiguousarray(x)
        cols = im2col_cuda(x, *geometry) if on_gpu else im2col_numpy(x, *geometry)
        k = cg * kh * kw
        cols_g = cols.reshape(n, groups, k, oh * ow)
        w_g = w.reshape(groups, o // groups, k)
        y = xp.matmul(w_g, cols_g).reshape(n, o, oh, ow)  # (N, G, Og, L) is (N, O, OH, OW)
        if b is not None:
            if on_gpu:
                bias_add_cuda(y, b)
            else:
                y += b.reshape(1, o, 1, 1)
        ctx.save(x.shape, w, cols_g, geometry, groups, b is not None)
        return y

    @staticmethod
    def backward(ctx, dy):
        x_shape, w, cols_g, geometry, groups, has_bias = ctx.saved
        on_gpu = ctx.device == "cuda"
        xp = backend.xp(ctx.device)
        n, o, oh, ow = dy.shape
        k = cols_g.shape[2]
        dy = xp.ascontiguousarray(dy)
        dy_g = dy.reshape(n, groups, o // groups, oh * ow)
        dx = dw = db = None
        if ctx.needs_input_grad[1]:
            # dw[g] = sum_n dy[n, g] @ cols[n, g]^T
            dw = xp.matmul(dy_g, cols_g.transpose(0, 1, 3, 2)).sum(axis=0).reshape(w.shape)
        if has_bias and ctx.needs_input_grad[2]:
            db = bias_grad_cuda(dy) if on_gpu else dy.sum(axis=(0, 2, 3))
        if ctx.needs_input_grad[0]:
            w_g = w.reshape(groups, o // groups, k)
            dcols = xp.matmul(w_g.transpose(0, 2, 1), dy_g)  # (N, G, K, L)
            dcols = dcols.reshape(n, groups * k, oh * ow)
            if on_gpu:
                dx = col2im_cuda(dcols, x_shape, *geometry)
            else:
                dx = col2im_numpy(dcols, x_shape, *geometry)
        return dx, dw, db


def conv2d(x, weight, bias=None, stride=1, padding=0, groups: int = 1):
    """2-D convolution. x: (N, C, H, W), weight: (O, C // groups, kh, kw), bias: (O,).

    ``stride`` and ``padding`` are an int or an (h, w) pair. Returns (N, O, OH, OW) with
    OH = (H + 2*pad_h - kh) // stride_h + 1.
    """
    require_tensor("conv2d", "x", x, ndim=4, layout="(N, C, H, W)")
    require_tensor("conv2d", "weight", weight, ndim=4, layout="(out, in // groups, kh, kw)")
    stride = pair("conv2d", "stride", stride, minimum=1)
    padding = pair("conv2d", "padding", padding, minimum=0)
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive integer, got {groups!r}")
    n, c, h, w = x.shape
    o, cg, kh, kw = weight.shape
    if c % groups:
        raise ValueError(f"conv2d: input channels {c} are not divisible by groups={groups}")
    if o % groups:
        raise ValueError(f"conv2d: output channels {o} are not divisible by groups={groups}")
    if cg != c // groups:
        raise ValueError(
            f"conv2d: weight has {cg} input channels per group, expected C // groups = "
            f"{c} // {groups} = {c // groups} (x: {x.shape}, weight: {weight.shape})"
        )
    if kh > h + 2 * padding[0] or kw > w + 2 * padding[1]:
        raise ValueError(
            f"conv2d: kernel {kh}x{kw} is larger than the padded input "
            f"{h + 2 * padding[0]}x{w + 2 * padding[1]}"
        )
    if bias is not None:
        require_tensor("conv2d", "bias", bias, ndim=1, layout="(out,)")
        if bias.shape[0] != o:
            raise ValueError(f"conv2d: bias has shape {bias.shape}, expected ({o},)")
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, groups=int(groups))
