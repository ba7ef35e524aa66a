# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. Convolution as im2col and col2im
#
# A convolution layer slides each of its O filters (C x kh x kw numbers) over the input and takes
# a dot product at every position. Like every framework, minidl computes the cross-correlation
# (the filter is not flipped):
#
# $$ y[n, o, o_y, o_x] = b[o] + \sum_{c, i, j} w[o, c, i, j]\;
#    x_{pad}[n, c,\; o_y s + i,\; o_x s + j] $$
#
# with stride s and zero padding p, so the output side is `OH = (H + 2p - kh) // s + 1`.
#
# Written as loops, that is seven nested loops, and slow. The classic trick (Chellapilla et al.
# 2006; Caffe; cuDNN's "implicit GEMM" is its descendant) is **im2col**: copy every window into a
# column of a matrix, and the whole convolution becomes **one matrix product**, which BLAS on the
# CPU and cuBLAS on the GPU do at near peak speed. Its transpose, **col2im**, gives the backward.
#
# Plan: the loops (the definition), im2col and col2im by hand in NumPy, the backward as matrix
# products, and then the CUDA kernels of `kernels/conv.cu` run on the CPU by minidl's kernel
# emulator, checked against our NumPy.

# %%
import inspect
import os

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import cuda
from minidl.ops import conv
from minidl.ops.window import Window2d

rng = np.random.default_rng(0)


# %% [markdown]
# ## The definition, as loops


# %%
def conv2d_loops(x, w, b, stride, pad):
    """x: (N, C, H, W), w: (O, C, kh, kw), b: (O,) -> y: (N, O, OH, OW), the plain definition."""
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    oh = (h_ + 2 * pad - kh) // stride + 1
    ow = (w_ + 2 * pad - kw) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n_, o_, oh, ow))
    for n in range(n_):
        for o in range(o_):
            for oy in range(oh):
                for ox in range(ow):
                    window = xpad[
                        n, :, oy * stride : oy * stride + kh, ox * stride : ox * stride + kw
                    ]
                    y[n, o, oy, ox] = b[o] + np.sum(w[o] * window)  # the c, i, j loops
    return y


# %% [markdown]
# ## im2col: every window becomes a column
#
# Column `(n, oy, ox)` of `cols` holds the window under output pixel (oy, ox) of image n,
# flattened in the order (c, i, j), the same order as a filter `w[o]` flattened. Then
#
# $$ \text{cols}[(c,i,j),\,(n,o_y,o_x)] = x_{pad}[n, c, o_y s + i, o_x s + j]
#    \qquad Y = W\,\text{cols} $$
#
# with W the filters as an (O, C·kh·kw) matrix and Y of shape (O, N·OH·OW). That is minidl's
# layout too: channels first and batch second, so one product covers the whole batch.


# %%
def im2col(x, kh, kw, stride, pad):
    """x: (N, C, H, W) -> cols: (C*kh*kw, N*OH*OW), and OH, OW."""
    n_, c_, h_, w_ = x.shape
    oh = (h_ + 2 * pad - kh) // stride + 1
    ow = (w_ + 2 * pad - kw) // stride + 1
    xpad = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((c_ * kh * kw, n_ * oh * ow), dtype=x.dtype)
    for n in range(n_):
        for oy in range(oh):
            for ox in range(ow):
                window = xpad[n, :, oy * stride : oy * stride + kh, ox * stride : ox * stride + kw]
                cols[:, (n * oh + oy) * ow + ox] = window.ravel()  # (c, i, j) order
    return cols, oh, ow


def conv2d_im2col(x, w, b, stride, pad):
    o_, _, kh, kw = w.shape
    cols, oh, ow = im2col(x, kh, kw, stride, pad)
    y = w.reshape(o_, -1) @ cols + b[:, None]  # (O, C*kh*kw) @ (C*kh*kw, N*OH*OW)
    return y.reshape(o_, len(x), oh, ow).transpose(1, 0, 2, 3)  # (O, N, ..) -> (N, O, ..)


x = rng.standard_normal((2, 3, 9, 9))
w = rng.standard_normal((4, 3, 3, 3))
b = rng.standard_normal(4)
for stride, pad in [(1, 0), (2, 1), (3, 2)]:
    error = np.abs(conv2d_im2col(x, w, b, stride, pad) - conv2d_loops(x, w, b, stride, pad)).max()
    print(f"stride {stride}, pad {pad}: im2col + GEMM vs loops, max error {error:.2e}")
    assert error < 1e-12

# %% [markdown]
# What the columns look like: one 5x5 image holding 1..25, a 3x3 kernel, stride 1. Each of the 9
# columns is one window; interior pixels appear in up to 9 columns. That duplication is the price
# of im2col: the matrix is about kh·kw / s² times as large as the input.

# %%
tiny = np.arange(1.0, 26.0).reshape(1, 1, 5, 5)
tiny_cols, _, _ = im2col(tiny, 3, 3, 1, 0)
fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4), gridspec_kw={"width_ratios": [5, 9]})
for ax, image, title in [(left, tiny[0, 0], "x (5x5)"), (right, tiny_cols, "cols (9 x 9)")]:
    ax.imshow(image, cmap="viridis")
    for (r, c), v in np.ndenumerate(image):
        ax.text(
            c,
            r,
            f"{v:.0f}",
            ha="center",
            va="center",
            color="white" if v < 16 else "black",
            fontsize=8,
        )
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
right.set_xlabel("column = output pixel (oy, ox)")
right.set_ylabel("row = (i, j) in the window")
plt.show()

# %% [markdown]
# minidl's NumPy `im2col_numpy` builds the same matrix faster: instead of a Python loop over the
# N·OH·OW windows, it loops over the kh·kw window *offsets* (i, j), and each offset is one strided
# slice of the whole batch. The geometry travels as one `Window2d` (`minidl/ops/window.py`, shared
# with max-pooling): kernel, stride, top/left padding, dilation and the output size, with
# `window.rows(i)` the slice `oy·sh + i·dh` (oy < OH) of the padded rows.

# %%
print(inspect.getsource(conv.im2col_numpy))
window = Window2d.over(9, 9, kernel=(3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1))
print(window)
assert np.array_equal(conv.im2col_numpy(x, window), im2col(x, 3, 3, 2, 1)[0])

# %% [markdown]
# ## col2im and the backward pass
#
# im2col is linear in x, and each entry of `cols` is a copy of one pixel. So the gradient flows
# back by adding each column entry to the pixel it was copied from: **col2im is the transpose of
# im2col**. Where windows overlap (stride < kernel), a pixel collects several entries.
#
# With Y = W cols and `dY` = dL/dY in the same (O, N·OH·OW) layout, the backward is three lines:
#
# $$ db[o] = \sum_{n, o_y, o_x} dY[o, \cdot] \qquad dW = dY\,\text{cols}^T
#    \qquad dx = \text{col2im}(W^T dY) $$


# %%
def col2im(dcols, x_shape, kh, kw, stride, pad):
    """dcols: (C*kh*kw, N*OH*OW) -> dx: (N, C, H, W); each entry adds back to its pixel."""
    n_, c_, h_, w_ = x_shape
    oh = (h_ + 2 * pad - kh) // stride + 1
    ow = (w_ + 2 * pad - kw) // stride + 1
    dxpad = np.zeros((n_, c_, h_ + 2 * pad, w_ + 2 * pad), dtype=dcols.dtype)
    for n in range(n_):
        for oy in range(oh):
            for ox in range(ow):
                column = dcols[:, (n * oh + oy) * ow + ox].reshape(c_, kh, kw)
                dxpad[n, :, oy * stride : oy * stride + kh, ox * stride : ox * stride + kw] += (
                    column
                )
    return dxpad[:, :, pad : pad + h_, pad : pad + w_]  # padding cells get no gradient


# %% [markdown]
# "Transpose" has a precise meaning we can test: for any x and any matrix C of the columns' shape,
# ⟨im2col(x), C⟩ = ⟨x, col2im(C)⟩.

# %%
some_cols = rng.standard_normal(im2col(x, 3, 3, 2, 1)[0].shape)
lhs = np.sum(im2col(x, 3, 3, 2, 1)[0] * some_cols)
rhs = np.sum(x * col2im(some_cols, x.shape, 3, 3, 2, 1))
print(f"<im2col(x), C> = {lhs:.10f}   <x, col2im(C)> = {rhs:.10f}   max error {abs(lhs - rhs):.2e}")
assert abs(lhs - rhs) < 1e-9

# %% [markdown]
# col2im of all ones counts how many windows cover each pixel. With AlexNet's overlapping 3x3,
# stride 2 windows the count is 1, 2 or 4: those pixels get 1, 2 or 4 gradient contributions.

# %%
ones = np.ones(im2col(np.zeros((1, 1, 9, 9)), 3, 3, 2, 0)[0].shape)
coverage = col2im(ones, (1, 1, 9, 9), 3, 3, 2, 0)[0, 0]
plt.figure(figsize=(3.5, 3.5))
plt.imshow(coverage, cmap="Blues")
for (r, c), v in np.ndenumerate(coverage):
    plt.text(c, r, f"{v:.0f}", ha="center", va="center")
plt.title("windows covering each pixel\n(3x3, stride 2)")
plt.axis("off")
plt.show()


# %% [markdown]
# Now the backward by hand, against minidl's autograd on the CPU (float64):


# %%
def conv2d_backward_by_hand(dy, x, w, stride, pad):
    o_, _, kh, kw = w.shape
    cols, oh, ow = im2col(x, kh, kw, stride, pad)
    dy_t = dy.transpose(1, 0, 2, 3).reshape(o_, -1)  # (N, O, OH, OW) -> (O, N*OH*OW)
    db = dy_t.sum(axis=1)
    dw = (dy_t @ cols.T).reshape(w.shape)
    dx = col2im(w.reshape(o_, -1).T @ dy_t, x.shape, kh, kw, stride, pad)
    return dx, dw, db


stride, pad = 2, 1
xt = mdl.tensor(x, requires_grad=True)
wt = mdl.tensor(w, requires_grad=True)
bt = mdl.tensor(b, requires_grad=True)
y = F.conv2d(xt, wt, bt, stride=stride, padding=pad)
dy = rng.standard_normal(y.shape)
y.backward(dy)
by_hand = conv2d_backward_by_hand(dy, x, w, stride, pad)
for name, ours, theirs in zip(["dx", "dw", "db"], by_hand, [xt.grad, wt.grad, bt.grad]):
    error = np.abs(ours - theirs.numpy()).max()
    print(f"{name}: by hand vs minidl (CPU), max error {error:.2e}")
    assert error < 1e-10

# %% [markdown]
# And the analytic gradient against finite differences (`mdl.gradcheck`, float64), with a stride
# and padding where windows overlap and padding cells fall inside windows:

# %%
small = [
    mdl.tensor(rng.standard_normal(s), requires_grad=True) for s in [(2, 2, 5, 5), (3, 2, 3, 3)]
]
ok = mdl.gradcheck(lambda a, k: F.conv2d(a, k, stride=2, padding=1), small)
print("gradcheck(conv2d, stride 2, padding 1, CPU):", ok)
assert ok

# %% [markdown]
# ## The CUDA kernels, on the CPU
#
# On a GPU minidl runs its own kernels for the non-GEMM parts, `kernels/conv.cu`: `im2col`
# (one thread per window `(c, n, oy, ox)` copying its kh·kw cells down the column), `col2im` and
# `bias_add`; the matrix products go to cuBLAS. Here is the im2col kernel. Read it beside our
# `im2col` above: same variable names, same index arithmetic.

# %%
source = (cuda.kernel_dir() / "conv.cu").read_text()
start = source.index("template <typename T>\n__global__ void im2col")
print(source[start : source.index("template <typename T>", start + 10)])

# %% [markdown]
# One difference stands out in `col2im`: the kernel does not scatter (one thread per column
# entry adding into its pixel would need atomic adds, whose order, and so whose rounding,
# changes from run to run). Each thread owns one input pixel and **gathers** the entries that
# were copied from it, visiting only the windows that contain it: no atomics, the same bits
# every run.
#
# No GPU here? With `MINIDL_CUDA_EMULATE=1`, a tensor on `device="cuda"` keeps a NumPy array, and
# each launch compiles the very same `.cu` file with the host C++ compiler (once, then cached)
# and runs every block and thread of the grid on the CPU (`docs/emulator.md`). Everything
# else in the op's GPU branch (launch shape, arguments, workspace) runs unchanged. It is slow, and
# that is fine: it catches wrong index arithmetic, and you can step through a kernel in gdb.

# %%
os.environ["MINIDL_CUDA_EMULATE"] = "1"  # before creating any "cuda" tensor
print("emulating the GPU:", mdl.backend.emulating(), "| kernels from", cuda.kernel_dir())

for dtype, tolerance in [(np.float32, 1e-5), (np.float64, 1e-12)]:
    xg = mdl.tensor(x.astype(dtype), requires_grad=True, device="cuda")
    wg = mdl.tensor(w.astype(dtype), requires_grad=True, device="cuda")
    bg = mdl.tensor(b.astype(dtype), requires_grad=True, device="cuda")
    yg = F.conv2d(xg, wg, bg, stride=stride, padding=pad)  # im2col, GEMM, bias_add kernels
    yg.backward(dy.astype(dtype))  # col2im and the bias-gradient kernels
    checks = {
        "y": (yg.numpy(), conv2d_im2col(x, w, b, stride, pad)),
        "dx": (xg.grad.numpy(), by_hand[0]),
        "dw": (wg.grad.numpy(), by_hand[1]),
        "db": (bg.grad.numpy(), by_hand[2]),
    }
    for name, (kernel, numpy) in checks.items():
        error = np.abs(kernel - numpy).max() / max(1.0, np.abs(numpy).max())
        print(f"{np.dtype(dtype).name} {name}: emulated kernel vs NumPy, max error {error:.2e}")
        assert error < tolerance, (name, error)

# %% [markdown]
# The same gradient check, now through the kernels (float64 on the emulated device):

# %%
small_gpu = [mdl.tensor(t.numpy(), requires_grad=True, device="cuda") for t in small]
ok = mdl.gradcheck(lambda a, k: F.conv2d(a, k, stride=2, padding=1), small_gpu)
print("gradcheck(conv2d, stride 2, padding 1, emulated kernels):", ok)
assert ok

# %% [markdown]
# **Read next:** `docs/conv.md` (the math, the thread mapping, split-K for dw); the plain loop is
# `conv2d` in `tests/reference.py`.
#
# ## Exercises
#
# 1. **Groups.** AlexNet's conv2 uses `groups=2`: output channels of group g see only input
#    channels of group g. Extend `conv2d_im2col` with one GEMM per group (hint: the rows of
#    `cols` for group g are a contiguous block) and check it against
#    `F.conv2d(..., groups=2)`.
# 2. **Memory.** For AlexNet's conv1 (3x227x227 input, 96 filters 11x11, stride 4, output
#    55x55) at batch 128, how many float32 bytes does `cols` take, and how many does x? Why is
#    the ratio about kh·kw / s²?
# 3. **Break a kernel.** Copy the folder `cuda.kernel_dir()` to a temporary folder, change
#    `int left = ox * sw - pw;` in its conv.cu to `ox * sw + pw`, and rerun the emulated check
#    inside `with cuda.kernel_source_override(folder):`. Which of y, dx, dw, db go wrong, and
#    which cases (stride, padding) still pass?
