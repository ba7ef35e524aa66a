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
# # 4. Dropout and a counter-based random generator
#
# AlexNet's fully connected layers have 55 million parameters and overfit without help. Dropout
# (section 4.2 of the paper; Srivastava et al. 2014) zeroes each hidden unit with probability
# p = 0.5 in every training step, so no unit can rely on particular others being present.
#
# Two questions make it interesting to implement:
#
# 1. **Scaling.** The paper multiplies outputs by 0.5 at *test* time. minidl, like every modern
#    framework, does **inverted dropout**: it scales the kept units by 1/(1-p) at *training*
#    time and leaves evaluation untouched.
# 2. **Randomness on a GPU.** Thousands of threads each need a random bit, the backward pass needs
#    the very same bits again, and the CPU path should agree. minidl uses a **counter-based**
#    generator: the bits of element i are a hash of (key, i), computed independently by any
#    thread, on any device, in any order.

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import cuda
from minidl import random as mdl_random
from minidl.ops import dropout as dropout_op

rng = np.random.default_rng(0)

# %% [markdown]
# ## Inverted dropout
#
# $$ \text{training: } y_i = \frac{m_i}{1-p}\,x_i,\quad m_i \sim \text{Bernoulli}(1-p)
#    \qquad\qquad \text{evaluation: } y = x $$
#
# so that E[y_i] = (1-p) x_i / (1-p) = x_i: the next layer sees activations of the same size in
# training and in evaluation. The paper's version (no scaling while training, times (1-p) at
# test time) gives the same expected value, but makes the test-time network differ from the
# trained one. Check the expectation empirically, averaging many masks:

# %%
x = mdl.tensor(np.full((1000,), 3.0))
mdl.manual_seed(0)
runs = np.stack([F.dropout(x, p=0.5).numpy() for _ in range(400)])
print("a few outputs of one run:", runs[0, :8], "(zeros, or 3 / 0.5 = 6)")
print(f"mean over 400 masks and 1000 units: {runs.mean():.4f} (expected 3.0)")
assert set(np.unique(runs)) == {0.0, 6.0}
assert abs(runs.mean() - 3.0) < 0.05
assert np.array_equal(F.dropout(x, p=0.5, training=False).numpy(), x.numpy())  # eval: identity

# %% [markdown]
# ## A counter-based generator
#
# A usual generator (Mersenne Twister, PCG) is a *sequence*: draw k depends on draws 0..k-1.
# On a GPU with one thread per element, thread i would have to skip ahead i draws. A
# counter-based generator (Salmon et al. 2011, "Random123": Philox, Threefry) instead makes the
# random bits a **function of (key, counter)**: thread i computes `bits(key, i)` alone.
#
# minidl's function is MurmurHash3's 32-bit finalizer `fmix32`, a bijection on 32-bit integers
# in which flipping one input bit flips about half the output bits, applied twice: once to the
# low 32 bits of the index mixed with the key's low half, once more with the high halves.
#
# $$ h = \text{fmix32}(i_{lo} \oplus key_{lo}) \qquad
#    \text{bits}(key, i) = \text{fmix32}\big(h + (i_{hi} \oplus key_{hi})
#    \cdot \text{0x9E3779B9}\big) $$
#
# Element i is kept when the top 24 bits, read as an integer u in [0, 2^24), satisfy
# u ≥ round(p · 2^24). Comparing *integers* makes the decision bit-exact on every device; a float
# comparison could round differently in C++ and in NumPy. Here it is by hand, in NumPy's uint32
# arithmetic (which wraps modulo 2^32, as C's `unsigned int` does):


# %%
def fmix32(h):
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def bits(key, count):
    index = np.arange(count, dtype=np.uint64)
    lo = (index & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    hi = (index >> np.uint64(32)).astype(np.uint32)
    h = fmix32(lo ^ np.uint32(key & 0xFFFFFFFF))
    return fmix32(h + (hi ^ np.uint32(key >> 32)) * np.uint32(0x9E3779B9))


def keep_mask(key, count, p):
    return (bits(key, count) >> np.uint32(8)) >= round(p * 2**24)


key = 0x0123456789ABCDEF
print("our bits   :", bits(key, 4))
print("minidl bits:", dropout_op.dropout_bits(key, 4))
assert np.array_equal(bits(key, 10_000), dropout_op.dropout_bits(key, 10_000))

# %% [markdown]
# And here are the same lines in the kernel, `kernels/dropout.cu`:

# %%
source = (cuda.kernel_dir() / "dropout.cu").read_text()
start = source.index("__device__ __forceinline__ unsigned int fmix32")
print(source[start : source.index("template <typename T>", start)])

# %% [markdown]
# ## The mask comes from the seed and the index
#
# Each call of `F.dropout` draws a fresh 64-bit key from the global generator
# (`mdl.manual_seed`), so every layer and every step gets a new mask, and a run is reproducible
# from its seed. Knowing that, we can predict `F.dropout`'s output exactly:

# %%
p = 0.5
x = rng.standard_normal((4, 6))
mdl.manual_seed(7)
y = F.dropout(mdl.tensor(x), p=p).numpy()

mdl.manual_seed(7)
key = mdl_random.next_key()  # the key F.dropout drew
predicted = x * keep_mask(key, x.size, p).reshape(x.shape) / (1 - p)
print("key:", hex(key))
print("F.dropout:\n", np.round(y, 3))
error = np.abs(y - predicted).max()
print(f"predicted from (seed, index) by hand: max error {error:.1e}")
assert error == 0.0

# %% [markdown]
# ## The same mask from the CUDA kernel
#
# The GPU branch launches `dropout_apply` with the key; each thread hashes its own index. (The
# backward launches the same kernel on dy: dx = dy * m / (1 - p) is the same mask-apply.) Under
# the emulator (notebook 2) the kernel runs on the CPU, and the result must equal the NumPy
# path's exactly: same key, same integer hash, same comparison, same product.
#
# One detail: NumPy computes a dropped unit as `x * 0`, which is **-0.0** for a negative x, while
# the kernel writes `T(0)`, +0.0. The two zeros compare equal (and behave the same in every later
# sum), but their bytes differ, so we compare values and masks, not bytes.

# %%
os.environ["MINIDL_CUDA_EMULATE"] = "1"  # before creating any "cuda" tensor

x_big = rng.standard_normal((64, 512)).astype(np.float32)
mdl.manual_seed(11)
y_cpu = F.dropout(mdl.tensor(x_big), p=0.5).numpy()
mdl.manual_seed(11)
y_gpu = F.dropout(mdl.tensor(x_big, device="cuda"), p=0.5).numpy()
same_mask = np.array_equal(y_cpu != 0, y_gpu != 0)
print("emulated kernel and NumPy keep the same units:", same_mask)
print(f"and give the same values: max error {np.abs(y_cpu - y_gpu).max():.1e}")
print(
    "signed zeros: NumPy",
    np.signbit(y_cpu[y_cpu == 0]).sum(),
    "negative, kernel",
    np.signbit(y_gpu[y_gpu == 0]).sum(),
)
assert same_mask and np.array_equal(y_cpu, y_gpu)

# %% [markdown]
# Because element i's bits depend only on (key, i), the launch shape does not matter. The kernel
# uses a grid-stride loop (a thread handles i, i + gridDim·blockDim, ...), so even a tiny launch
# of 3 blocks of 32 threads covers the array, and gives the same mask:

# %%
y_small_launch = np.empty_like(x_big)
key = 0x0123456789ABCDEF
cuda.launch(
    "dropout",
    "dropout_apply",
    np.float32,
    (3,),  # grid: 3 blocks
    (32,),  # block: 32 threads
    (
        x_big,
        y_small_launch,
        cuda.i64(x_big.size),
        cuda.i64(0),  # first: x_big[0] is element 0 of the batch (docs/distributed.md)
        np.uint32(key & 0xFFFFFFFF),
        np.uint32(key >> 32),
        np.uint32(round(0.5 * 2**24)),
        np.float32(2.0),
    ),
)
by_hand = x_big * keep_mask(key, x_big.size, 0.5).reshape(x_big.shape) * np.float32(2.0)
print(f"3 x 32 threads vs the mask by hand: max error {np.abs(y_small_launch - by_hand).max():.1e}")
assert np.array_equal(y_small_launch, by_hand)

# %% [markdown]
# ## Is it random enough?
#
# A hash is not a proof of randomness, but we can test what dropout needs. For n elements the
# number kept is Binomial(n, 1-p): its mean is n(1-p) and its standard deviation
# sqrt(n p (1-p)). Over many keys, the keep rates should scatter around 1-p with that spread, and
# neighbouring elements (consecutive counters, the hardest case for a weak hash) should be
# independent: P(keep i and keep i+1) = (1-p)².

# %%
p, n, keys = 0.3, 20_000, 300
key_rng = np.random.default_rng(1)
rates, pairs = [], []
for _ in range(keys):
    m = keep_mask(int(key_rng.integers(0, 2**63 - 1)), n, p)
    rates.append(m.mean())
    pairs.append((m[:-1] & m[1:]).mean())
rates, pairs = np.array(rates), np.array(pairs)
sigma = np.sqrt(p * (1 - p) / n)
print(
    f"keep rate: mean {rates.mean():.5f} (expected {1 - p}), std {rates.std():.5f} "
    f"(expected {sigma:.5f})"
)
print(f"neighbours both kept: {pairs.mean():.5f} (expected (1-p)^2 = {(1 - p) ** 2:.5f})")
assert abs(rates.mean() - (1 - p)) < 5 * sigma / np.sqrt(keys)
assert 0.8 < rates.std() / sigma < 1.2
assert abs(pairs.mean() - (1 - p) ** 2) < 0.002

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
left.hist(rates, bins=25, density=True, alpha=0.7, label=f"{keys} keys")
grid = np.linspace(rates.min(), rates.max(), 200)
left.plot(
    grid,
    np.exp(-0.5 * ((grid - (1 - p)) / sigma) ** 2) / (sigma * np.sqrt(2 * np.pi)),
    label="Binomial (normal approx.)",
)
left.set_xlabel(f"fraction kept of {n:,} elements (p = {p})")
left.legend()
right.imshow(keep_mask(123, 64 * 128, p).reshape(64, 128), cmap="gray", interpolation="nearest")
right.set_title("one mask, 64 x 128 (white = kept): no visible structure")
right.axis("off")
plt.show()

# %% [markdown]
# ## Backward uses the same mask
#
# y = x · m / (1-p) is linear in x, so dx = dy · m / (1-p): the gradient flows only through the
# kept units, scaled the same way. The NumPy path saves the scaled mask for backward. The GPU
# path saves only the **key** (8 bytes instead of an array as large as x) and the backward
# kernel regenerates the mask from (key, i).

# %%
for device in ("cpu", "cuda"):
    mdl.manual_seed(5)
    xt = mdl.tensor(x_big, requires_grad=True, device=device)
    yt = F.dropout(xt, p=0.5)
    saved = yt._node.ctx.saved
    print(f"{device}: backward keeps", [type(s).__name__ for s in saved])
    yt.backward(np.ones_like(x_big))
    kept = yt.numpy() != 0
    # every kept unit gets dy / (1 - p) = 2, every dropped one 0: the same mask as forward
    assert np.array_equal(xt.grad.numpy(), np.where(kept, 2.0, 0.0).astype(np.float32))
    print(f"{device}: dx == mask / (1 - p) where forward kept:", True)

# %% [markdown]
# A gradient check needs a deterministic function, and dropout draws a new mask on every call.
# `F.dropout(x, p, mask=m)` takes a mask instead (1 = keep), for exactly this purpose:

# %%
mask = rng.random((5, 7)) > 0.5
xt = mdl.tensor(rng.standard_normal((5, 7)), requires_grad=True)
ok = mdl.gradcheck(lambda t: F.dropout(t, p=0.5, mask=mask), [xt])
print("gradcheck(dropout with an injected mask):", ok)
assert ok

# %% [markdown]
# **Read next:** `docs/dropout.md`; `minidl/ops/dropout.py` and `kernels/dropout.cu` side by side.
#
# ## Exercises
#
# 1. Why 24 bits? Show that for p = 0.3 a comparison of `bits / 2**32 >= p` done in float32 can
#    decide differently from the same comparison in float64 for some 32-bit values, while the
#    integer comparison on the top 24 bits is exact in both (float32 has a 24-bit significand).
# 2. Drop the high half of the counter (use only `fmix32(lo ^ key_lo)`). For which tensor sizes
#    would two elements of one tensor get the same bits? Is AlexNet's fc6 input anywhere near?
# 3. Implement the paper's original dropout (no scaling in training, multiply by 1-p in
#    evaluation) with `mask=`, and check on a small Linear layer that the expected training output
#    matches the evaluation output, as it does for the inverted version.
