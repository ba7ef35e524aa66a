"""Batch normalization (Ioffe & Szegedy 2015, algorithm 1), per channel c over the M = N * plane
values of x: (N, C, plane) (plane = H*W for images, L for sequences, 1 for (N, C) features):

    training:  mean[c] = sum x / M,   var[c] = sum (x - mean)^2 / M            (biased)
               xhat = (x - mean) / sqrt(var + eps),   y = weight[c] * xhat + bias[c]
               running = (1 - momentum) * running + momentum * batch,
               with the UNBIASED variance var * M / (M - 1) in running_var
    eval:      the same y with running_mean and running_var in place of the batch's

These are PyTorch's conventions (momentum 0.1, eps 1e-5). Keras's ``BatchNormalization`` writes
the same update as ``moving = moving * momentum + batch * (1 - momentum)`` with momentum 0.99, so
Keras's 0.99 is our 0.01; its epsilon is 1e-3 and it keeps the biased variance (docs/batchnorm.md).

Backward (training), with the sums over the M values of one channel:

    dbias[c]   = sum dy,        dweight[c] = sum dy * xhat
    dx         = weight * invstd / M * (M * dy - dbias - xhat * dweight)

In eval the statistics are constants, so dx = weight * invstd * dy.

The statistics are the corrected two-pass algorithm, never E[x^2] - E[x]^2 (which loses every
digit of a channel whose mean is 1e4 and spread 1 in float32): shift = mean(x), then
offset = mean(x - shift) and var = mean((x - shift)^2) - offset^2, mean = shift + offset; x is
normalized as ((x - shift) - offset) * invstd so that the large shift cancels exactly first.
``kernels/batchnorm.cu`` computes them as a fixed-order shared-memory tree per channel (the same
bits every run); the NumPy path below is the same math, vectorized. The plain definition, loop
for loop, is ``tests/reference.py``'s ``batch_norm``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes, threads
from minidl.autograd import Function
from minidl.ops import batchnorm_ranks
from minidl.ops._checks import require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def batch_norm_stats_numpy(x):
    """x: (N, C, P) -> shift, offset, var: (C,), the biased variance; mean = shift + offset."""
    shift = x.mean(axis=(0, 2))
    d = x - shift[:, None]
    offset = d.mean(axis=(0, 2))
    d *= d
    var = np.maximum(d.mean(axis=(0, 2)) - offset * offset, 0)
    return shift, offset, var


def batch_norm_forward_numpy(x, shift, offset, var, weight, bias, eps):
    """x: (N, C, P), per-channel (C,) statistics -> y and xhat: (N, C, P)."""
    invstd = 1 / np.sqrt(var + x.dtype.type(eps))
    xhat = x - shift[:, None]
    xhat -= offset[:, None]
    xhat *= invstd[:, None]
    return xhat * weight[:, None] + bias[:, None], xhat


def batch_norm_backward_numpy(dy, xhat, var, weight, eps, training, sums=None):
    """dy, xhat: (N, C, P) -> dx: (N, C, P), dweight, dbias: (C,). ``sums``: the (dweight,
    dbias) to use for dx in place of this batch's own (the whole job's, batchnorm_ranks.py)."""
    invstd = 1 / np.sqrt(var + dy.dtype.type(eps))
    if sums is None:
        dweight, dbias = (dy * xhat).sum(axis=(0, 2)), dy.sum(axis=(0, 2))
    else:
        dweight, dbias = sums
    scale = (weight * invstd)[:, None]
    if not training:
        return dy * scale, dweight, dbias
    m = dy.shape[0] * dy.shape[2]
    dx = m * dy
    dx -= dbias[:, None]
    dx -= xhat * dweight[:, None]
    dx *= scale / m
    return dx, dweight, dbias


def update_running_numpy(running_mean, running_var, shift, offset, var, m, momentum):
    """In place: running = (1 - momentum) * running + momentum * batch (unbiased variance)."""
    running_mean *= 1 - momentum
    running_mean += momentum * (shift + offset)
    running_var *= 1 - momentum
    running_var += momentum * var * (m / (m - 1))


def over_channels(fn, *arrays):
    """fn on parts of the channels, on the thread pool (minidl/threads.py): each (N, C, P) array
    cut along C, each (C,) one with it; fn's results joined the same way. A channel's sums are
    its own, so every statistic is still the whole batch's."""

    def part(*arrays):
        results = fn(*(a.transpose(1, 0, 2) if a.ndim == 3 else a for a in arrays))
        return tuple(r.transpose(1, 0, 2) if r.ndim == 3 else r for r in results)

    outs = threads.over_batch(part, *(a.transpose(1, 0, 2) if a.ndim == 3 else a for a in arrays))
    return tuple(r.transpose(1, 0, 2) if r.ndim == 3 else r for r in outs)


# ---- CUDA (kernels/batchnorm.cu) -----------------------------------------------------------------
def batch_norm_stats_cuda(x):
    n, c, plane = x.shape
    xp = backend.xp("cuda")
    acc = dtypes.compute_dtype(x.dtype)  # float32 statistics for 16-bit x (kernels/batchnorm.cu)
    shift, offset, var = (xp.empty((c,), dtype=acc) for _ in range(3))
    cuda.launch(
        "batchnorm",
        "batch_norm_stats",
        x.dtype,
        (c,),
        (cuda.REDUCE_THREADS,),
        (x, shift, offset, var, *cuda.i32(n, c), cuda.i64(plane)),
    )
    return shift, offset, var


def update_running_cuda(running_mean, running_var, shift, offset, var, m, momentum):
    c = running_mean.size
    cuda.launch_1d(
        "batchnorm",
        "batch_norm_update_running",
        running_mean.dtype,
        c,
        (
            running_mean,
            running_var,
            shift,
            offset,
            var,
            cuda.i32(c),
            cuda.i64(m),
            *cuda.real(running_mean.dtype, momentum),
        ),
    )


def batch_norm_forward_cuda(x, shift, offset, var, weight, bias, eps):
    n, c, plane = x.shape
    y = backend.xp("cuda").empty_like(x)
    cuda.launch_1d(
        "batchnorm",
        "batch_norm_forward",
        x.dtype,
        x.size,
        (
            x,
            shift,
            offset,
            var,
            weight,
            bias,
            y,
            cuda.i64(x.size),
            cuda.i32(c),
            cuda.i64(plane),
            *cuda.real(x.dtype, eps),
        ),
    )
    return y


def batch_norm_backward_cuda(dy, x, shift, offset, var, weight, eps, training, reduce=None):
    """``reduce(dweight, dbias)``: the job's sums from this rank's (batchnorm_ranks.py)."""
    n, c, plane = x.shape
    xp = backend.xp("cuda")
    dweight = xp.empty((c,), dtype=dtypes.compute_dtype(x.dtype))  # float32 for 16-bit x
    dbias = xp.empty((c,), dtype=dtypes.compute_dtype(x.dtype))
    cuda.launch(
        "batchnorm",
        "batch_norm_backward_reduce",
        x.dtype,
        (c,),
        (cuda.REDUCE_THREADS,),
        (
            dy,
            x,
            shift,
            offset,
            var,
            dweight,
            dbias,
            *cuda.i32(n, c),
            cuda.i64(plane),
            *cuda.real(x.dtype, eps),
        ),
    )
    if reduce is not None:  # a job of several ranks, in training
        dweight, dbias = reduce(dweight, dbias)
    dx = xp.empty_like(x)
    cuda.launch_1d(
        "batchnorm",
        "batch_norm_backward_input",
        x.dtype,
        x.size,
        (
            dy,
            x,
            shift,
            offset,
            var,
            weight,
            dweight,
            dbias,
            dx,
            cuda.i64(x.size),
            cuda.i32(c),
            cuda.i64(plane),
            *cuda.real(x.dtype, eps),
            cuda.i32(1 if training else 0),
        ),
    )
    # the parameters' gradients in the parameters' dtype (rounded once, from float32, if 16-bit)
    return dx, dweight.astype(weight.dtype, copy=False), dbias.astype(weight.dtype, copy=False)


# ---- autograd ------------------------------------------------------------------------------------
class BatchNormFunction(Function):
    dtype_kinds = "f"  # PyTorch refuses integer tensors here too

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        # x: (N, C, ...) -> y: (N, C, ...); weight, bias, running_*: (C,)
        shape = x.shape
        n, c = shape[:2]
        xp = backend.xp(ctx.device)
        x = xp.ascontiguousarray(x).reshape(n, c, -1)  # (N, C, P)
        m = x.shape[0] * x.shape[2]
        if weight is None:
            weight = xp.ones((c,), dtype=x.dtype)
        if bias is None:
            bias = xp.zeros((c,), dtype=x.dtype)
        on_gpu = ctx.device == "cuda"
        if not on_gpu:  # 16-bit x: statistics and xhat in float32, as the kernels keep them
            x = dtypes.to_compute(x)
        shared = training and batchnorm_ranks.in_a_job()  # the job's statistics, not this rank's
        if training:
            stats = batch_norm_stats_cuda(x) if on_gpu else over_channels(batch_norm_stats_numpy, x)
            if shared:
                stats, total = batchnorm_ranks.whole_batch_statistics(stats, m, ctx.device)
                ctx.share = (m, total)
                m = total
            if running_mean is not None:
                update = update_running_cuda if on_gpu else update_running_numpy
                update(running_mean, running_var, *stats, m, momentum)
        else:
            stats = (running_mean, xp.zeros((c,), dtype=running_mean.dtype), running_var)
        if on_gpu:
            y = batch_norm_forward_cuda(x, *stats, weight, bias, eps)
            ctx.save(x, stats, weight, training, eps, shape)
        else:
            y, xhat = threads.over_batch(  # the statistics are the whole batch's (above)
                lambda x: batch_norm_forward_numpy(x, *stats, weight, bias, eps), x
            )
            ctx.save(xhat, stats, weight, training, eps, shape)
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, dy):
        saved, stats, weight, training, eps, shape = ctx.saved
        xp = backend.xp(ctx.device)
        dy = xp.ascontiguousarray(dy).reshape(saved.shape)
        reduce = _job_sums(ctx)  # None in one process, and in eval
        if ctx.device == "cuda":  # saved is x; the kernels recompute xhat from it
            dx, dweight, dbias = batch_norm_backward_cuda(
                dy, saved, *stats, weight, eps, training, reduce
            )
        else:  # saved is xhat (float32 for 16-bit x; apply and backward round the results)
            dy = dy.astype(saved.dtype, copy=False)
            sums = None
            if reduce is not None:  # the sums first, over the whole job
                sums = reduce((dy * saved).sum(axis=(0, 2)), dy.sum(axis=(0, 2)))
            dx, dweight, dbias = over_channels(
                lambda dy, xhat, var, weight, *sums: batch_norm_backward_numpy(
                    dy, xhat, var, weight, eps, training, sums or None
                ),
                *(dy, saved, stats[2], weight, *(sums or ())),
            )
        return dx.reshape(shape), dweight, dbias, None, None


def _job_sums(ctx):
    """In a job of several ranks, in training: this rank's backward sums -> the job's
    (batchnorm_ranks.py); None otherwise."""
    share = getattr(ctx, "share", None)  # (m, M), set by forward
    if share is None:
        return None
    return lambda dweight, dbias: batchnorm_ranks.whole_batch_sums(
        dweight, dbias, *share, ctx.device
    )


def _check_channel_vector(name: str, value, x, channels: int) -> None:
    if value is None:
        return
    require_tensor("batch_norm", name, value)
    if value.shape != (channels,):
        raise ValueError(
            f"batch_norm: {name} must have shape ({channels},) for x of shape {x.shape}, "
            f"got {value.shape}"
        )
    expected = x.dtype
    if name.startswith("running") and dtypes.is_16bit(x.dtype):
        expected = dtypes.compute_dtype(x.dtype)  # 16-bit x: float32 statistics (docs/precision.md)
    if value.dtype != expected:
        raise TypeError(
            f"batch_norm: {name} has dtype {value.dtype}, expected {np.dtype(expected)} for x of "
            f"dtype {x.dtype}"
        )


def batch_norm(
    x: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization of x: (N, C, ...) per channel, PyTorch's semantics (see above).

    In training, running_mean and running_var (if given) are updated in place; in eval they are
    required and used instead of the batch's statistics."""
    require_tensor("batch_norm", "x", x)
    if x.ndim < 2:
        raise ValueError(
            f"batch_norm: x must be (N, C, ...) with at least 2 dimensions, got {x.shape}"
        )
    channels = x.shape[1]
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: give both running_mean and running_var, or neither")
    for name, value in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        _check_channel_vector(name, value, x, channels)
    if not training and running_mean is None:
        raise ValueError("batch_norm: eval (training=False) needs running_mean and running_var")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"batch_norm: momentum must be in [0, 1], got {momentum!r}")
    if eps < 0:
        raise ValueError(f"batch_norm: eps must be >= 0, got {eps!r}")
    if training and x.numel() // channels <= 1 and not batchnorm_ranks.in_a_job():
        raise ValueError(
            f"batch_norm: Expected more than 1 value per channel when training, "
            f"got input of shape {x.shape}"
        )
    if running_mean is not None:
        for name, buffer in (("running_mean", running_mean), ("running_var", running_var)):
            if buffer.device != x.device:
                raise RuntimeError(f"batch_norm: {name} is on {buffer.device}, x on {x.device}")
            if not buffer.data.flags.c_contiguous:
                raise ValueError(f"batch_norm: {name} must be contiguous (it is updated in place)")
    return BatchNormFunction.apply(
        x,
        weight,
        bias,
        None if running_mean is None else running_mean.data,
        None if running_var is None else running_var.data,
        training=bool(training),
        momentum=float(momentum),
        eps=float(eps),
    )
