"""Per-channel sums on the GPU: the bias gradient of conv2d and of bias_relu.

    out[c] = sum over n and the pixels of x[n, c, ...]        (NumPy: x.sum(axis=(0, 2, ...)))

``kernels/reduce.cu`` gives each channel one block and a shared-memory tree, so the order of the
additions is fixed and the result deterministic.
Page: docs/reduce.md (the tree, barrier by barrier). Plain definition: NumPy's sum, above.
"""

from __future__ import annotations

from minidl import backend, cuda


def channel_sum_cuda(x):
    """x: (N, C, ...) contiguous -> (C,)."""
    n, c = x.shape[:2]
    out = backend.xp("cuda").empty((c,), dtype=x.dtype)
    cuda.launch(
        "reduce",
        "channel_sum",
        x.dtype,
        (c,),
        (cuda.REDUCE_THREADS,),
        (x, out, *cuda.i32(n, c), cuda.i64(x.size // max(1, n * c))),
    )
    return out
