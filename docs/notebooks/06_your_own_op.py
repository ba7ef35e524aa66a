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
# # 6. Your own op, with your own kernel, in your own folder
#
# The last notebook builds an op the way minidl's own are built, but outside the package: the
# math, a NumPy forward and backward, an autograd `Function` whose branch follows the device, a
# float64 gradient check, and then a CUDA kernel in **a `.cu` file in your own folder**, loaded
# with `minidl.cuda.load_module` (the same NVRTC options, compile cache and CPU emulator as
# minidl's kernels) and checked against NumPy.
#
# `docs/custom_op.md` does this for an element-wise op (softplus). Here we take one that needs
# threads to **cooperate**: **RMS normalization** of each row (Zhang and Sennrich 2019; used in
# LLaMA), whose kernel sums a row with a shared-memory tree and `__syncthreads()` barriers.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import backend, cuda, nn, testing
from minidl.autograd import Function

rng = np.random.default_rng(0)

# %% [markdown]
# ## The math
#
# For a row x of length D:
#
# $$ r = \sqrt{\tfrac{1}{D}\textstyle\sum_j x_j^2 + \epsilon} \qquad y_j = \frac{x_j}{r} $$
#
# Every output depends on the whole row through r, so the Jacobian is not diagonal. With
# ∂r/∂x_k = x_k / (D r):
#
# $$ \frac{\partial y_j}{\partial x_k} = \frac{\delta_{jk}}{r} - \frac{x_j x_k}{D r^3}
#    \quad\Longrightarrow\quad
#    dx_k = \sum_j dy_j \frac{\partial y_j}{\partial x_k}
#         = \frac{1}{r}\Big(dy_k - y_k \cdot \tfrac{1}{D}\textstyle\sum_j dy_j\, y_j\Big) $$
#
# Backward needs y (or x) and r, and one more sum per row: a reduction again.

# %% [markdown]
# ## NumPy forward and backward


# %%
def rms_norm_forward_numpy(x, eps):
    """x: (R, D) -> y: (R, D), rms: (R,)."""
    rms = np.sqrt((x * x).mean(axis=1) + eps)
    return x / rms[:, None], rms


def rms_norm_backward_numpy(dy, y, rms):
    """dy, y: (R, D), rms: (R,) -> dx: (R, D)."""
    mean_dy_y = (dy * y).mean(axis=1, keepdims=True)
    return (dy - y * mean_dy_y) / rms[:, None]


x = rng.standard_normal((3, 8)) * np.array([[0.1], [1.0], [10.0]])  # rows of very different size
y, rms = rms_norm_forward_numpy(x, 1e-6)
rms_y = np.sqrt((y * y).mean(axis=1))
print("rms of x's rows:", np.round(rms, 4), "-> rms of y's rows:", np.round(rms_y, 6))
# 1 up to eps, which keeps an all-zero row finite: mean(y^2) = mean(x^2) / (mean(x^2) + eps)
mean_square = (x * x).mean(axis=1)
assert np.allclose(rms_y**2, mean_square / (mean_square + 1e-6), rtol=1e-12)

# %% [markdown]
# ## A `Function`, and a gradient check
#
# `forward(ctx, x, eps)` and `backward(ctx, dy)` receive **arrays** (NumPy, CuPy on a GPU, NumPy
# under the emulator) and choose their branch from `ctx.device`, never from the array type. The
# CUDA branch calls functions written further down: Python looks them up when the branch runs.


# %%
class RMSNormFunction(Function):
    @staticmethod
    def forward(ctx, x, eps):
        # x: (R, D) -> y: (R, D)
        if ctx.device == "cuda":
            x = backend.xp("cuda").ascontiguousarray(x)  # the kernel indexes flat rows
            y, rms = rms_norm_forward_cuda(x, eps)
        else:
            y, rms = rms_norm_forward_numpy(x, eps)
        ctx.save(y, rms)
        return y

    @staticmethod
    def backward(ctx, dy):
        y, rms = ctx.saved
        if ctx.device == "cuda":
            return rms_norm_backward_cuda(backend.xp("cuda").ascontiguousarray(dy), y, rms), None
        return rms_norm_backward_numpy(dy, y, rms), None  # no gradient for eps


def rms_norm(x: mdl.Tensor, eps: float = 1e-6) -> mdl.Tensor:
    """Each row of x: (R, D) divided by its root mean square."""
    if not isinstance(x, mdl.Tensor) or x.ndim != 2:
        raise ValueError(f"rms_norm: x must be a 2-D minidl Tensor (R, D), got {x!r}")
    return RMSNormFunction.apply(x, float(eps))


x64 = mdl.tensor(rng.standard_normal((4, 7)), requires_grad=True)
ok = testing.gradcheck(lambda t: rms_norm(t), [x64])  # minidl.testing: docs/testing.md
print("gradcheck(rms_norm, CPU):", ok)
assert ok

# %% [markdown]
# ## The kernel, in your own folder
#
# In your project this is a file you edit beside your script, say `my_kernels/rms_norm.cu`.
# Here the notebook writes it into a folder under the system's temporary folder, so that running
# the course writes nothing into the repository. The layout follows `kernels/*.cu`: a header
# saying what the file computes, the thread mapping, the launch shape and the NumPy twin; then
# kernels templated over the element type `T` (the loader instantiates `float` and `double`).
#
# One block per row. Each of the block's threads sums a strided share of the row into a
# register, writes it to **shared memory** (visible to the whole block), and then a **tree**
# halves the number of partial sums at each step: with 256 threads, 8 steps. Between steps,
# `__syncthreads()` makes every thread wait until all have written, so no thread reads a partial
# sum before it is complete. After the last barrier every thread reads the total from
# `partial[0]`.

# %%
RMS_NORM_CU = r"""
// rms_norm.cu: RMS normalization of each row (docs/notebooks/06_your_own_op.py).
//
//   rms_norm_forward   x: (R, D) -> y: (R, D), rms: (R,)
//                      rms[r] = sqrt(mean_j x[r, j]^2 + eps),  y[r, j] = x[r, j] / rms[r]
//   rms_norm_backward  dy, y: (R, D), rms: (R,) -> dx: (R, D)
//                      dx[r, j] = (dy[r, j] - y[r, j] * mean_k dy[r, k] y[r, k]) / rms[r]
//
// One block of MINIDL_REDUCE_THREADS (a power of two) threads per row: each thread sums a strided
// share of the row, a shared-memory tree adds the partial sums (a barrier after every step), and
// every thread then reads the total and writes its share of the row. Fixed order: same bits
// every run. Launch: grid (R,), block (MINIDL_REDUCE_THREADS,).
// Matches rms_norm_forward_numpy and rms_norm_backward_numpy.
#include "common.cuh"  // minidl's helpers: MINIDL_REDUCE_THREADS, real_exp, ...

__device__ __forceinline__ float real_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double real_sqrt(double v) { return sqrt(v); }

template <typename T>
__global__ void rms_norm_forward(const T* x, T* y, T* rms, int D, T eps) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    const T* row = x + (long long)blockIdx.x * D;
    T* out = y + (long long)blockIdx.x * D;
    T sum = T(0);
    for (int j = threadIdx.x; j < D; j += blockDim.x) sum += row[j] * row[j];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {  // tree: 256 -> 128 -> ... -> 1
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    T r = real_sqrt(partial[0] / T(D) + eps);
    if (threadIdx.x == 0) rms[blockIdx.x] = r;
    for (int j = threadIdx.x; j < D; j += blockDim.x) out[j] = row[j] / r;
}

template <typename T>
__global__ void rms_norm_backward(const T* dy, const T* y, const T* rms, T* dx, int D) {
    __shared__ T partial[MINIDL_REDUCE_THREADS];
    long long offset = (long long)blockIdx.x * D;
    T sum = T(0);
    for (int j = threadIdx.x; j < D; j += blockDim.x) sum += dy[offset + j] * y[offset + j];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    T mean_dy_y = partial[0] / T(D);
    T r = rms[blockIdx.x];
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        dx[offset + j] = (dy[offset + j] - y[offset + j] * mean_dy_y) / r;
    }
}
"""

# your own folder (a fixed one, so a rerun finds its compiled kernel in minidl's cache)
my_folder = Path(tempfile.gettempdir()) / "minidl-course" / "my_kernels"
my_folder.mkdir(parents=True, exist_ok=True)
(my_folder / "rms_norm.cu").write_text(RMS_NORM_CU)
print("wrote", my_folder / "rms_norm.cu")

# %% [markdown]
# A picture of the tree for a block of 16 threads (the kernel's loop, run in NumPy): each row is
# the shared array after one step; the dark cells are threads with nothing left to do.

# %%
values = rng.integers(1, 10, 16).astype(float)
steps = [values.copy()]
active = [np.ones(16, bool)]
half = 8
while half > 0:
    partial = steps[-1].copy()
    partial[:half] += partial[half : 2 * half]
    steps.append(partial)
    active.append(np.arange(16) < half)
    half //= 2
fig, ax = plt.subplots(figsize=(9, 3))
ax.imshow(np.where(active, 1.0, 0.3), cmap="Greys_r", vmin=0, vmax=1.5, aspect="auto")
for (step, thread), v in np.ndenumerate(np.array(steps)):
    if active[step][thread]:
        ax.text(thread, step, f"{v:.0f}", ha="center", va="center", fontsize=8)
ax.set_xlabel("threadIdx.x (partial[threadIdx.x])")
ax.set_ylabel("after step (a barrier each)")
ax.set_yticks(range(len(steps)), ["write"] + [f"half={2**k}" for k in range(3, -1, -1)])
ax.set_title(f"shared-memory tree sum of 16 values: {values.sum():.0f}")
plt.show()
assert steps[-1][0] == values.sum()

# %% [markdown]
# ## Loading it: `minidl.cuda.load_module`
#
# `cuda.load_module(path)` takes a `.cu` file anywhere. The file may `#include "common.cuh"`
# (minidl's helpers) and headers beside it. On a GPU it compiles through NVRTC with minidl's
# options, once per device, and again when the file or a header changes. Under
# `MINIDL_CUDA_EMULATE=1` the same file goes to the CPU emulator. `module.launch(name, dtype,
# grid, block, args)` takes arrays and NumPy scalars whose type is the C type: `cuda.i32` for
# `int`, `cuda.i64` for `long long`, `cuda.real(dtype, ...)` for `T`.

# %%
os.environ["MINIDL_CUDA_EMULATE"] = "1"  # no GPU needed; remove this line on a machine with one

module = cuda.load_module(my_folder / "rms_norm.cu")
print(module)


def rms_norm_forward_cuda(x, eps):
    rows, d = x.shape
    xp = backend.xp("cuda")
    y = xp.empty_like(x)
    rms = xp.empty((rows,), dtype=x.dtype)
    module.launch(
        "rms_norm_forward",
        x.dtype,
        (rows,),  # grid: one block per row
        (cuda.REDUCE_THREADS,),  # block: MINIDL_REDUCE_THREADS threads
        (x, y, rms, cuda.i32(d), *cuda.real(x.dtype, eps)),
    )
    return y, rms


def rms_norm_backward_cuda(dy, y, rms):
    rows, d = y.shape
    dx = backend.xp("cuda").empty_like(dy)
    module.launch(
        "rms_norm_backward",
        dy.dtype,
        (rows,),
        (cuda.REDUCE_THREADS,),
        (dy, y, rms, dx, cuda.i32(d)),
    )
    return dx


# %% [markdown]
# The loader's errors say what is wrong:

# %%
try:
    module.launch("rms_norm_forwad", np.float32, (1,), (1,), ())
except KeyError as err:
    print("KeyError:", err)
try:
    cuda.load_module(my_folder / "missing.cu")
except FileNotFoundError as err:
    print("FileNotFoundError:", err)

# %% [markdown]
# ## The kernel against NumPy
#
# Rows longer than the block (D = 700 > 256 threads: each thread sums several elements) and
# shorter (D = 5: most threads add zeros), in float32 and float64, forward and backward.
# `minidl.testing.forward_backward(fn, inputs, device, dtype)` runs the op on one device and its
# backward with a seeded `dy`, and returns the output and the input gradients as NumPy arrays:

# %%
for rows, d in [(6, 700), (3, 5)]:
    for dtype, tolerance in [(np.float32, 1e-5), (np.float64, 1e-12)]:
        xs = rng.standard_normal((rows, d)) * 3
        results = {
            device: testing.forward_backward(rms_norm, [xs], device, dtype)
            for device in ("cpu", "cuda")
        }
        forward_error = np.abs(results["cuda"][0] - results["cpu"][0]).max()
        backward_error = np.abs(results["cuda"][1][0] - results["cpu"][1][0]).max()
        print(
            f"({rows}, {d}) {np.dtype(dtype).name}: kernel vs NumPy, forward max error "
            f"{forward_error:.1e}, backward max error {backward_error:.1e}"
        )
        assert forward_error < tolerance and backward_error < tolerance

# %% [markdown]
# In a test file, that comparison is one line: `testing.check_kernel` runs both devices with the
# same inputs and `dy` and fails when the forward or any gradient is off by more than the
# library's tolerance for the dtype (`testing.TOLERANCE`):

# %%
for dtype in (np.float32, np.float64):
    testing.check_kernel(rms_norm, [(6, 300)], dtype)
print("check_kernel(rms_norm): the kernels match the NumPy path")

# %% [markdown]
# And the gradient check through the kernels (float64, emulated device). It runs the forward
# twice per input element, and the emulator runs each block's 256 threads as fibers that meet at
# every barrier, so we keep it small:

# %%
x64_gpu = mdl.tensor(rng.standard_normal((3, 16)), requires_grad=True, device="cuda")
ok = testing.gradcheck(lambda t: rms_norm(t), [x64_gpu])
print("gradcheck(rms_norm, emulated kernels):", ok)
assert ok

# %% [markdown]
# The op now composes with everything else: here it normalizes the hidden layer of a small
# classifier, and forward and backward run through minidl's kernels and ours. The same network
# on the CPU (NumPy everywhere) must give the same loss and gradients.


# %%
def tiny_network(device):
    """Linear -> rms_norm -> Linear -> cross-entropy; returns the loss and the first weight's
    gradient."""
    mdl.manual_seed(0)  # the same initial weights on both devices
    first, second = nn.Linear(12, 32), nn.Linear(32, 3)
    first.to(device)
    second.to(device)
    inputs = mdl.tensor(np.linspace(-1, 1, 5 * 12, dtype=np.float32).reshape(5, 12), device=device)
    loss = F.cross_entropy(second(rms_norm(first(inputs))), np.array([0, 1, 2, 1, 0]))
    loss.backward()
    return loss.item(), first.weight.grad.numpy()


loss_cpu, grad_cpu = tiny_network("cpu")
loss_gpu, grad_gpu = tiny_network("cuda")
error = np.abs(grad_gpu - grad_cpu).max() / np.abs(grad_cpu).max()
print(f"loss: cpu {loss_cpu:.6f}, emulated cuda {loss_gpu:.6f}")
print(f"first layer's weight gradient, cuda vs cpu: max relative error {error:.1e}")
assert abs(loss_gpu - loss_cpu) < 1e-5 and error < 1e-4

# %% [markdown]
# **On a GPU** (CuPy installed, `pip install -e ".[cuda13]"`), delete the `MINIDL_CUDA_EMULATE`
# line and rerun: the same file compiles through NVRTC, the same checks run on the device, and
# races that the emulator cannot show (it runs a block's threads one at a time, switching only
# at barriers) would show up as wrong sums.
#
# How the emulator knows a kernel needs fibers: it looks for `__syncthreads()` in the kernel's
# body and in the `__device__` functions the kernel calls (`minidl/emulator.py`,
# `kernels_with_barriers`), so a barrier inside a helper such as a `block_sum()` works too.
#
# **Read next:** `docs/custom_op.md` (softplus end to end, also on a GPU), `docs/reduce.md`
# (minidl's own shared-memory tree, barrier by barrier) and `docs/testing.md` (the checks of
# this notebook as one-line tests: `minidl.testing`).
#
# ## Exercises
#
# 1. **A learned gain.** RMSNorm usually multiplies by a gain g of shape (D,): y = g · x / r.
#    Add g as a second input of the Function. Its gradient dg_j = Σ_rows dy_j x_j / r sums over
#    rows: write it in NumPy, pass `gradcheck`, then add it to the kernel (one thread per column
#    j looping over rows is enough).
# 2. **Remove a barrier.** Delete the `__syncthreads()` inside the tree loop of
#    `rms_norm_forward`, reload the module and rerun the checks under the emulator. Do they
#    still pass? Explain the result from how the emulator runs a block (one thread at a time,
#    switching only at barriers), then say what could happen on a GPU, where a block's warps
#    run at the same time.
# 3. **Fewer barriers.** The last 5 steps of the tree (half = 16 ... 1) happen inside one warp of
#    32 threads. Look up `__shfl_down_sync` and write a warp-level version of the last steps.
#    Does the emulator support it? (Read `minidl/emu_shim.h` to find out.)
