"""BatchNorm in a data-parallel job: the statistics of the whole global batch, not of one rank's
part (PyTorch's SyncBatchNorm; ``minidl/ops/batchnorm.py`` calls these in a job of several ranks).

Each rank holds m_r of the M values of a channel. Its own statistics would make the ranks train a
different network from one process (and a rank whose part of the last batch is one sample would
have no variance at all: BatchNorm1d refused it, after a whole epoch). So in training:

    forward    mean = sum_r m_r mean_r / M                                  (one all-reduce)
               var  = sum_r m_r (var_r + (mean_r - mean)^2) / M             (a second one)
    backward   the sums dbias = sum dy and dweight = sum dy * xhat are needed over the whole
               batch. Rank r's dy is the gradient of its own mean loss, which the optimizer's
               all-reduce weights by m_r / M (``allreduce_gradients(weight=n)``), so the sums
               are taken with the same weights: S = sum_r (m_r / M) S_r, and then
               dx = weight * invstd / m_r * (m_r dy - dbias - xhat dweight) on each rank with
               its own m_r: the single process's dx, scaled as rank r's loss expects.

Every rank must therefore run a BatchNorm layer in training mode together, as every rank runs the
optimizer step together (a layer run on one rank alone would wait for the others).
"""

from __future__ import annotations

import numpy as np

from minidl import backend, distributed


def in_a_job() -> bool:
    """True in a data-parallel job of several ranks."""
    return distributed.world_size() > 1


def whole_batch_statistics(stats, m: int, device: str):
    """(shift, offset, var) over this rank's m values -> (mean, 0, var) over the job's M, and M.
    The combination (Chan, Golub and LeVeque's) adds each rank's spread about the global mean,
    so no digits cancel; it is done in float64 and returned in the statistics' dtype."""
    xp = backend.xp(device)
    shift, offset, var = stats
    mean = shift.astype(np.float64) + offset
    first = xp.concatenate([m * mean, xp.asarray([float(m)])])
    distributed.allreduce_(first)
    total = float(first[-1])
    if total <= 1:
        raise ValueError(
            "batch_norm: Expected more than 1 value per channel when training, got "
            f"{int(total)} in the whole batch of the {distributed.world_size()} ranks"
        )
    global_mean = first[:-1] / total
    spread = m * (var.astype(np.float64) + (mean - global_mean) ** 2)
    distributed.allreduce_(spread)
    dtype = var.dtype
    return (global_mean.astype(dtype), xp.zeros_like(var), (spread / total).astype(dtype)), total


def whole_batch_sums(dweight, dbias, m: int, total: float, device: str):
    """This rank's sums of dy * xhat and dy -> the job's, weighted by m_r / M (above)."""
    xp = backend.xp(device)
    both = xp.concatenate([dweight, dbias]).astype(np.float64) * (m / total)
    distributed.allreduce_(both)
    c = dweight.shape[0]
    return both[:c].astype(dweight.dtype), both[c:].astype(dbias.dtype)
