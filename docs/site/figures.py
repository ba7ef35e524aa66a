"""The pages' figures, drawn at build time from the code the tests run (docs/site/hooks.py).

Each function returns PNG bytes. The numbers come from minidl itself: the window geometry
(``Window2d``), the launch shape (``cuda.THREADS``, ``cuda.grid_for``), the NumPy paths
(``im2col_numpy``, ``col2im_numpy``, ``channel_window_sum``), so a figure changes when the code
does. ``FIGURES`` maps each figure's path in the site to its function; a page shows one with
``![...](figures/NAME.png)``.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from minidl import cuda  # noqa: E402
from minidl.ops.conv import col2im_numpy, im2col_numpy  # noqa: E402
from minidl.ops.dropout import dropout_mask_numpy  # noqa: E402
from minidl.ops.lrn import channel_window_sum  # noqa: E402
from minidl.ops.window import Window2d  # noqa: E402


def png(fig) -> bytes:
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out.getvalue()


def outline(ax, row, col, height, width, color="red"):
    """A box around cells [row, row + height) x [col, col + width) of an imshow grid."""
    box = Rectangle((col - 0.5, row - 0.5), width, height, fill=False, lw=2.5, ec=color)
    ax.add_patch(box)


def annotate(ax, values, fmt="{:g}", skip=None):
    for (r, c), v in np.ndenumerate(values):
        if v != skip:
            ax.text(c, r, fmt.format(v), ha="center", va="center", fontsize=7)


def conv_im2col() -> bytes:
    """im2col's thread mapping: one thread per window (c, n, oy, ox) fills one column."""
    h = w = 4
    window = Window2d.over(h, w, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1))
    x = np.arange(1.0, h * w + 1).reshape(1, 1, h, w)  # pixel numbers; 0 will mean padding
    cols = im2col_numpy(x, window)  # (C*kh*kw, N*OH*OW)
    oy, ox = 1, 2
    column = oy * window.ow + ox  # the thread for (c=0, n=0, oy, ox)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), width_ratios=[1, 2.6])
    left.imshow(x[0, 0], cmap="Blues", vmin=-4, vmax=h * w)
    annotate(left, x[0, 0].astype(int))
    top, first = oy * window.sh - window.ph, ox * window.sw - window.pw
    outline(left, top, first, window.kh, window.kw)
    left.set_title(f"x (4x4), pad 1: window ({oy}, {ox})", fontsize=9)
    right.imshow(np.where(cols == 0, -4, cols), cmap="Blues", vmin=-4, vmax=h * w)
    annotate(right, cols.astype(int), skip=0)
    outline(right, 0, column, window.kh * window.kw, 1)
    right.set_title(
        f"cols ({cols.shape[0]} x {cols.shape[1]}): thread (c=0, n=0, oy={oy}, ox={ox}) "
        f"writes column {column}",
        fontsize=9,
    )
    right.set_xlabel("column (n, oy, ox)")
    right.set_ylabel("row (c, i, j)")
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return png(fig)


def pool_threads() -> bytes:
    """max_pool2d: overlapping windows (what a backward thread gathers), and forward's blocks."""
    window = Window2d.over(9, 9, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1))
    ones = np.ones((window.kh * window.kw, window.oh * window.ow))
    covering = col2im_numpy(ones, (1, 1, 9, 9), window)[0, 0]  # windows holding each pixel
    alexnet = Window2d.over(55, 55, (3, 3), (2, 2), (0, 0, 0, 0), (1, 1))  # pool1
    channels = 2
    count = channels * alexnet.oh * alexnet.ow  # one thread per output (n, c, oy, ox)
    (blocks,) = cuda.grid_for(count)
    block = np.arange(count).reshape(channels, alexnet.oh, alexnet.ow) // cuda.THREADS
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    left.imshow(covering, cmap="YlOrRd", vmin=0, vmax=4)
    annotate(left, covering.astype(int))
    outline(left, 0, 0, 3, 3, "blue")
    outline(left, 0, 2, 3, 3, "red")
    left.set_title("3x3 windows, stride 2, on 9x9: windows\nholding each pixel", fontsize=9)
    right.imshow(np.concatenate([block[0], np.full((alexnet.oh, 1), np.nan), block[1]], 1), "tab20")
    right.set_title(
        f"pool1 forward ({alexnet.oh}x{alexnet.ow} per channel, channels 0-1):\n"
        f"the block of each output, {cuda.THREADS} threads a block ({blocks} blocks here)",
        fontsize=9,
    )
    for ax in (left, right):
        ax.set_xticks([])
        ax.set_yticks([])
    return png(fig)


def lrn_window() -> bytes:
    """Which channels a[j] enter s[c]: the window of n = 5, clipped at the first and last."""
    channels, size = 7, 5
    eye = np.eye(channels).reshape(channels, channels, 1)  # image j is channel j alone
    window = channel_window_sum(eye, size)[:, :, 0].T  # [c, j] = 1 if a[j] is in s[c]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(window, cmap="Greens", vmin=0, vmax=1.6)
    ax.set_xlabel("input channel j")
    ax.set_ylabel("output channel c")
    ax.set_xticks(range(channels))
    ax.set_yticks(range(channels))
    ax.set_title(f"s[c] sums a[j]^2 over the shaded j (n = {size}, C = {channels})", fontsize=9)
    return png(fig)


def reduce_tree() -> bytes:
    """channel_sum's tree on a block of 8 threads and 20 values, level by level (docs/reduce.md).
    The loops are the kernel's (kernels/reduce.cu), run in Python."""
    threads, x = 8, np.arange(1.0, 21.0)
    partial = np.array([x[t::threads].sum() for t in range(threads)])  # phase 1
    levels, halves = [partial.copy()], []
    half = threads // 2
    while half > 0:  # phase 2: partial[t] += partial[t + half] for t < half
        partial[:half] += partial[half : 2 * half]
        levels.append(partial.copy())
        halves.append(half)
        half //= 2
    assert partial[0] == x.sum()
    fig, ax = plt.subplots(figsize=(8, 3.2))
    for level, values in enumerate(levels):
        live = threads >> level
        for t, v in enumerate(values):
            color = "#9ecae1" if t < live else "#eeeeee"
            ax.add_patch(Rectangle((t - 0.4, -level - 0.3), 0.8, 0.6, fc=color, ec="grey"))
            ax.text(t, -level, f"{v:g}", ha="center", va="center", fontsize=8)
    for level, half in enumerate(halves):
        for t in range(half):
            ax.annotate(
                "", (t, -level - 0.7), (t + half, -level - 0.3),
                arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 0.8},
            )  # fmt: skip
    ax.set_yticks([-i for i in range(len(levels))])
    ax.set_yticklabels(["phase 1"] + [f"half = {h}" for h in halves])
    ax.set_xticks(range(threads))
    ax.set_xlabel("slot partial[t] (thread t)")
    ax.set_xlim(-0.6, threads - 0.4)
    ax.set_ylim(-len(levels) + 0.4, 0.6)
    ax.set_title("partial[] after each barrier; red: t + half added into t", fontsize=9)
    return png(fig)


def grid_stride_thread(count: int, grid: int, block: int) -> np.ndarray:
    """The thread (blockIdx.x * blockDim.x + threadIdx.x) that handles each element i under
    FOR_EACH_INDEX (kernels/common.cuh): i = thread, thread + grid * block, ..."""
    return np.arange(count) % (grid * block)


def dropout_launches() -> bytes:
    """dropout_apply under two launch shapes: different threads per element, the same mask."""
    rows, cols = 6, 16
    count = rows * cols
    shapes = [(2, 8), (1, 32)]  # (blocks, threads a block), both smaller than the elements
    mask = dropout_mask_numpy(key=2012, shape=(count,), p=0.5)  # a function of (key, i) alone
    fig, axes = plt.subplots(1, 3, figsize=(11, 2.6))
    for ax, (grid, block) in zip(axes, shapes):
        thread = grid_stride_thread(count, grid, block).reshape(rows, cols)
        ax.imshow(thread, cmap="viridis", alpha=0.5)
        annotate(ax, thread)
        ax.set_title(f"grid {grid} x block {block}: the thread of each i", fontsize=9)
    axes[2].imshow(mask.reshape(rows, cols) > 0, cmap="Greys_r", vmin=-0.3, vmax=1)
    axes[2].set_title("keep(key, i), p = 0.5: the same for both", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    return png(fig)


FIGURES = {
    "figures/conv_im2col.png": conv_im2col,
    "figures/pool_threads.png": pool_threads,
    "figures/lrn_window.png": lrn_window,
    "figures/reduce_tree.png": reduce_tree,
    "figures/dropout_launches.png": dropout_launches,
}
