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
# # 3. Overlapping max-pooling and local response normalization
#
# Two of the layers that made AlexNet (Krizhevsky, Sutskever and Hinton, 2012) distinctive:
#
# - **overlapping max-pooling** (section 3.4): 3x3 windows with stride 2, so neighbouring
#   windows share a row or column. The paper reports 0.4% lower top-1 error than 2x2 windows
#   with stride 2, and less overfitting;
# - **local response normalization** (section 3.3): each activation is divided by a power of the
#   energy of its neighbouring *channels* at the same pixel, a form of lateral inhibition.
#
# For pooling we look at the backward pass (where does the gradient go when windows overlap, and
# how a GPU can compute it with the same bits every run). For LRN we pin down a detail that
# frameworks disagree on: whether alpha is divided by the window size.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
import minidl.functional as F

rng = np.random.default_rng(0)

# %% [markdown]
# ## Max-pooling, forward
#
# $$ y[n, c, o_y, o_x] = \max_{0 \le i < k_h,\; 0 \le j < k_w} x[n, c,\; o_y s + i,\; o_x s + j] $$
#
# For backward we must remember **which** input won each window: `argmax`, the flat index
# `h * W + w` of the winner (PyTorch's `return_indices` layout). When several cells tie for the
# maximum, minidl picks the **first in row-major window order** (a strict `>` while scanning),
# so the choice is well defined on every device.


# %%
def max_pool2d_loops(x, k, s):
    """x: (N, C, H, W) -> y, argmax: (N, C, OH, OW); no padding, the plain definition."""
    n_, c_, h_, w_ = x.shape
    oh, ow = (h_ - k) // s + 1, (w_ - k) // s + 1
    y = np.empty((n_, c_, oh, ow), dtype=x.dtype)
    argmax = np.empty((n_, c_, oh, ow), dtype=np.int64)
    for n, c, oy, ox in np.ndindex(n_, c_, oh, ow):  # every output
        best, where = -np.inf, -1
        for i, j in np.ndindex(k, k):  # its window, in row-major order
            h, w = oy * s + i, ox * s + j
            if x[n, c, h, w] > best:  # strict: ties keep the first maximum
                best, where = x[n, c, h, w], h * w_ + w
        y[n, c, oy, ox], argmax[n, c, oy, ox] = best, where
    return y, argmax


x = rng.standard_normal((2, 3, 9, 9))
y_loops, argmax_loops = max_pool2d_loops(x, 3, 2)
y = F.max_pool2d(mdl.tensor(x), 3, stride=2)
error = np.abs(y.numpy() - y_loops).max()
print(f"max_pool2d 3x3/2, minidl (CPU) vs loops: max error {error:.1e}")
assert error == 0.0

# %% [markdown]
# ## Max-pooling, backward: the gradient goes to the winner
#
# The max is locally just "copy the winner", so its derivative is 1 for the winner and 0 for the
# others. Each output sends its gradient to its argmax, and with overlapping windows a pixel that
# wins several windows **adds up** their gradients:
#
# $$ dx[n, c, h, w] = \sum_{(o_y, o_x):\ \text{argmax}[n,c,o_y,o_x] = hW + w} dy[n, c, o_y, o_x] $$


# %%
def max_pool2d_backward_loops(dy, argmax, x_shape):
    dx = np.zeros(x_shape)
    w_ = x_shape[3]
    for (n, c, oy, ox), where in np.ndenumerate(argmax):
        dx[n, c, where // w_, where % w_] += dy[n, c, oy, ox]
    return dx


xt = mdl.tensor(x, requires_grad=True)
yt = F.max_pool2d(xt, 3, stride=2)
dy = rng.standard_normal(yt.shape)
yt.backward(dy)
error = np.abs(xt.grad.numpy() - max_pool2d_backward_loops(dy, argmax_loops, x.shape)).max()
print(f"max_pool2d backward, minidl (CPU) vs loops: max error {error:.1e}")
assert error < 1e-15

# %% [markdown]
# A picture: one 9x9 image, dy = 1 everywhere. The gradient each pixel receives counts the
# windows it won. With overlapping windows a local maximum can win up to four windows.

# %%
image = mdl.tensor(rng.standard_normal((1, 1, 9, 9)), requires_grad=True)
F.max_pool2d(image, 3, stride=2).sum().backward()
fig, (left, right) = plt.subplots(1, 2, figsize=(8, 4))
left.imshow(image.numpy()[0, 0], cmap="gray")
left.set_title("x")
right.imshow(image.grad.numpy()[0, 0], cmap="Reds")
for (r, c), v in np.ndenumerate(image.grad.numpy()[0, 0]):
    if v:
        right.text(c, r, f"{v:.0f}", ha="center", va="center")
right.set_title("dx for dy = 1: windows won")
for ax in (left, right):
    ax.axis("off")
plt.show()

# %% [markdown]
# Ties: on a constant image every cell of a window is a maximum. The first one in row-major
# order wins, so the gradient lands on each window's top-left cell:

# %%
flat = mdl.tensor(np.ones((1, 1, 5, 5)), requires_grad=True)
F.max_pool2d(flat, 3, stride=2).sum().backward()
print(flat.grad.numpy()[0, 0])
expected = np.zeros((5, 5))
expected[0:3:2, 0:3:2] = (
    1  # the top-left cells of the 2x2 windows, at (0, 0), (0, 2), (2, 0), (2, 2)
)
assert np.array_equal(flat.grad.numpy()[0, 0], expected)

# %% [markdown]
# The gradient check needs inputs **without ties**: at a tie the max is not differentiable (a
# finite difference of ±eps changes which cell wins). Random normal values have no ties.

# %%
ok = mdl.gradcheck(lambda t: F.max_pool2d(t, 3, stride=2, padding=1), [xt])
print("gradcheck(max_pool2d 3x3/2, padding 1, CPU):", ok)
assert ok

# %% [markdown]
# ## A deterministic backward on the GPU
#
# On a GPU, the obvious backward is a scatter: one thread per *output* doing
# `atomicAdd(&dx[argmax], dy)`. Where a pixel won two windows, two threads add into it, in
# whatever order the hardware schedules them. Floating-point addition is not associative, so
# the order changes the last bits:

# %%
values = rng.standard_normal(1000).astype(np.float32)
sums = {float(np.cumsum(rng.permutation(values))[-1]) for _ in range(20)}
print(f"one float32 sum in 20 orders: {len(sums)} different results, e.g. {sorted(sums)[:3]}")

# %% [markdown]
# Bits that change from run to run make bugs hard to reproduce and results hard to compare.
# `kernels/pool.cu` therefore **gathers**: one thread per *input* pixel visits the few windows
# that contain it, in a fixed order, and adds the gradients of those that chose it. No atomics,
# the same additions in the same order every time.
#
# We run that kernel on the CPU emulator (the same `.cu` file, compiled by the host compiler;
# see notebook 2), twice, and compare bits.

# %%
os.environ["MINIDL_CUDA_EMULATE"] = "1"  # before creating any "cuda" tensor

x32 = rng.standard_normal((4, 8, 27, 27)).astype(np.float32)  # conv1's pooling at a small size
dy32 = rng.standard_normal((4, 8, 13, 13)).astype(np.float32)


def pool_forward_backward(device):
    t = mdl.tensor(x32, requires_grad=True, device=device)
    out = F.max_pool2d(t, 3, stride=2)
    out.backward(dy32)
    return out.numpy(), t.grad.numpy()


y_gpu1, dx_gpu1 = pool_forward_backward("cuda")
y_gpu2, dx_gpu2 = pool_forward_backward("cuda")
y_cpu, dx_cpu = pool_forward_backward("cpu")
same_bits = dx_gpu1.tobytes() == dx_gpu2.tobytes() and y_gpu1.tobytes() == y_gpu2.tobytes()
print("two runs of the emulated kernels give the same bits:", same_bits)
print(
    f"kernel vs NumPy: forward max error {np.abs(y_gpu1 - y_cpu).max():.1e}, "
    f"backward max error {np.abs(dx_gpu1 - dx_cpu).max():.1e}"
)
assert same_bits
assert np.array_equal(y_gpu1, y_cpu) and np.abs(dx_gpu1 - dx_cpu).max() < 1e-6

# %% [markdown]
# (The emulator runs threads one after another, so it would not show an atomics race either;
# that is what the GPU test tier is for. What it shows is that the gather is *correct*, and a
# gather has no race to show.)
#
# ## Local response normalization
#
# The paper's formula (section 3.3), over the channels of one pixel, with a window of n
# channels centred on c and clipped at the edges:
#
# $$ b[c] = a[c] \Big/ \Big(k + \alpha
#    \sum_{j=\max(0,\,c-n/2)}^{\min(C-1,\,c+n/2)} a[j]^2\Big)^{\beta} $$
#
# with n = 5, k = 2, α = 1e-4, β = 0.75. **α is not divided by n** in the paper. Caffe and
# PyTorch's `nn.LocalResponseNorm` divide it by the window size, so `LocalResponseNorm(size=n,
# alpha=a)` in PyTorch computes the paper's formula with α = a / n. minidl follows the paper.
#
# A known answer tells the conventions apart. One pixel with channels x = [1, 2, ..., 7], n = 5,
# k = 2, β = 0.75, α = 1. Channel 0 by hand: its window is channels 0..2, so
# b[0] = 1 / (2 + 1 + 4 + 9)^0.75 = 1 / 16^0.75 = 1/8.


# %%
def lrn_paper(a, n, alpha, beta, k):
    """a: (C,) one pixel's channels -> b: (C,), the paper's formula as a loop over channels."""
    b = np.empty_like(a)
    for c in range(len(a)):
        window = a[max(0, c - n // 2) : min(len(a), c + n // 2 + 1)]
        b[c] = a[c] / (k + alpha * np.sum(window**2)) ** beta
    return b


def lrn_torch_convention(a, n, alpha, beta, k):
    """What PyTorch's LocalResponseNorm(n, alpha, beta, k) computes: alpha divided by n."""
    return lrn_paper(a, n, alpha / n, beta, k)


x7 = np.arange(1.0, 8.0)
known = np.array([0.125, 0.14865089, 0.14461559, 0.13465396, 0.12486180, 0.15766808, 0.20332207])
paper = lrn_paper(x7, 5, 1.0, 0.75, 2.0)
torch_like = lrn_torch_convention(x7, 5, 1.0, 0.75, 2.0)
ours = F.local_response_norm(mdl.tensor(x7.reshape(1, 7, 1, 1)), 5, alpha=1.0, beta=0.75, k=2.0)
ours = ours.numpy().ravel()
print("paper's formula      :", np.round(paper, 8))
print("PyTorch's alpha / n  :", np.round(torch_like, 8))
print("minidl               :", np.round(ours, 8))
print(f"minidl vs the known answer: max error {np.abs(ours - known).max():.1e}")
assert np.abs(paper - known).max() < 1e-8 and np.abs(ours - known).max() < 1e-7
assert abs(torch_like[0] - 0.30836784) < 1e-8  # 1 / (2 + 14/5)^0.75
# The conversion: PyTorch's module with alpha = a * n equals the paper's with alpha = a.
converted = lrn_torch_convention(x7, 5, 1.0 * 5, 0.75, 2.0)
print(
    f"PyTorch convention with alpha * n vs paper: max error {np.abs(converted - paper).max():.1e}"
)
assert np.abs(converted - paper).max() < 1e-15

# %%
fig, ax = plt.subplots(figsize=(7, 3))
channels = np.arange(7)
ax.bar(channels - 0.2, paper, 0.4, label="paper (minidl): alpha")
ax.bar(channels + 0.2, torch_like, 0.4, label="PyTorch / Caffe: alpha / n")
ax.set_xlabel("channel c (x[c] = c + 1)")
ax.set_ylabel("b[c]")
ax.set_title("LRN of x = [1..7], n=5, k=2, beta=0.75, alpha=1")
ax.legend()
plt.show()

# %% [markdown]
# Why the test uses α = 1 and not the paper's 1e-4: with α = 1e-4 the sum term is tiny next to
# k = 2, and the two conventions differ by under 0.4%. A test at α = 1e-4 with a loose tolerance
# would pass with either convention, or with a window that misses a channel (Chainer's LRN test
# reference had such an off-by-one for years). Choose test values where every term matters.

# %%
tiny_alpha = np.abs(
    lrn_paper(x7, 5, 1e-4, 0.75, 2.0) / lrn_torch_convention(x7, 5, 1e-4, 0.75, 2.0) - 1
).max()
print(f"at alpha = 1e-4 the conventions differ by at most {100 * tiny_alpha:.3f}%")

# %% [markdown]
# ## LRN's backward, the kernel, and gradcheck
#
# With s[c] = k + α Σ_window a[j]², b[c] = a[c] s[c]^(-β). Since a[j] appears in the sums of
# every channel c whose window contains j (the window is symmetric, so those are the channels in
# j's own window):
#
# $$ \frac{\partial L}{\partial a[j]} = db[j]\, s[j]^{-\beta}
#    - 2\alpha\beta\, a[j] \sum_{c \in \text{window}(j)} db[c]\, \frac{b[c]}{s[c]} $$
#
# `kernels/lrn.cu` runs one thread per element (n, c, h, w), each summing its own channel window.
# Below: the gradient check at α near 1 on the CPU and on the emulated kernels, and the kernels
# against NumPy at the paper's values on a conv1-like activation.

# %%
a = rng.standard_normal((2, 7, 3, 3))
for device in ("cpu", "cuda"):
    at = mdl.tensor(a, requires_grad=True, device=device)
    ok = mdl.gradcheck(lambda t: F.local_response_norm(t, 5, alpha=0.9, beta=0.75, k=2.0), [at])
    print(f"gradcheck(local_response_norm, alpha 0.9, {device}):", ok)
    assert ok

act = np.maximum(rng.standard_normal((2, 16, 13, 13)), 0).astype(np.float32) * 10
results = {}
for device in ("cpu", "cuda"):
    t = mdl.tensor(act, requires_grad=True, device=device)
    out = F.local_response_norm(t, 5, alpha=1e-4, beta=0.75, k=2.0)
    out.backward(np.ones(act.shape, np.float32))
    results[device] = (out.numpy(), t.grad.numpy())
# errors relative to the largest value, as float32 keeps about 7 significant digits
forward_error = (
    np.abs(results["cuda"][0] - results["cpu"][0]).max() / np.abs(results["cpu"][0]).max()
)
backward_error = (
    np.abs(results["cuda"][1] - results["cpu"][1]).max() / np.abs(results["cpu"][1]).max()
)
print(
    f"LRN kernel vs NumPy (float32): forward max relative error {forward_error:.1e}, "
    f"backward max relative error {backward_error:.1e}"
)
assert forward_error < 1e-5 and backward_error < 1e-5

# %% [markdown]
# **Read next:** `docs/pool.md` and `docs/lrn.md`; the plain loops are `max_pool2d` and
# `local_response_norm` in `tests/reference.py`.
#
# ## Exercises
#
# 1. Compare 3x3/2 (overlapping) with 2x2/2 pooling on a random 27x27 image: how many pixels get
#    a gradient in each case, and what is the largest number of windows one pixel wins?
# 2. Write the GPU kernel's *gather* backward in NumPy loops: for each input pixel (h, w), loop
#    over the windows (oy, ox) that contain it, in a fixed order, and add dy where argmax points
#    at (h, w). Check it against `max_pool2d_backward_loops`. Which range of oy contains h?
# 3. The paper's LRN takes n = 5; what does minidl say when you pass `size=4`, and why does an
#    even window make no sense for a *centred* sum? Then find α for PyTorch's
#    `LocalResponseNorm(5, alpha=?, beta=0.75, k=2)` to reproduce AlexNet's LRN.
