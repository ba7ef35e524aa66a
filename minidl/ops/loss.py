"""The softmax cross-entropy loss, computed from logits (docs/loss.md; the plain loops are
cross_entropy and cross_entropy_options in tests/reference.py; softmax and log_softmax themselves
are minidl/ops/softmax.py).

    lse[n]  = m[n] + log sum_k exp(z[n, k] - m[n]),    m[n] = max_k z[n, k]   (log-sum-exp)
    loss    = mean_n (lse[n] - z[n, t[n]])  (computed as (m - z_t) + log sum, exact for huge logits)
    dz[n,k] = (exp(z[n, k] - lse[n]) - [k == t[n]]) * dloss / N

Subtracting the row maximum keeps every exp() at most 1, so logits of 1e4 are fine. The GPU path
of the loss is ``kernels/loss.cu`` (one block per row: shared-memory reductions for the max and
the sum).

PyTorch's options (class ``weight`` w, ``ignore_index``, ``label_smoothing`` eps, probability
targets, ``reduction``) all make row n's loss a weighted sum of its log-probabilities:

    loss[n] = -sum_k q[n, k] log softmax(z)[n, k],     dz[n, k] = softmax(z)[n, k] Q[n] - q[n, k]
    q[n, k] = w[k] ((1 - eps) [k == t[n]] + eps / K)   (0 for a row whose t[n] == ignore_index)
    q[n, k] = w[k] ((1 - eps) p[n, k] + eps / K)       (probability targets p)

with Q[n] = sum_k q[n, k]. "mean" divides the sum by sum_n w[t[n]] over rows not ignored (the
number of rows for probability targets), "sum" does not, "none" keeps one loss per row. Logits
(N, K, d1, ...) are rows (N*d1*..., K) with the class axis moved last.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from minidl import backend, cuda, dtypes
from minidl.autograd import Function, GraphTensor
from minidl.ops._checks import require_tensor

if TYPE_CHECKING:
    from minidl.tensor import Tensor


# ---- NumPy ---------------------------------------------------------------------------------------
def logsumexp_rows(xp, z):
    m = z.max(axis=-1, keepdims=True)
    return (m + xp.log(xp.exp(z - m).sum(axis=-1, keepdims=True)))[..., 0]


def cross_entropy_forward_numpy(z, t):
    """z: (N, K), t: (N,) int -> per-row losses (N,), lse (N,)."""
    m = z.max(axis=1)
    log_sum = np.log(np.exp(z - m[:, None]).sum(axis=1))
    # (m - z_t) + log_sum rather than lse - z_t: with logits of 1e4, lse rounds in float32 and the
    # subtraction would lose the small loss; m - z_t is exact.
    losses = (m - z[np.arange(z.shape[0]), t]) + log_sum
    return losses, m + log_sum


def cross_entropy_backward_numpy(dloss, z, t, lse):
    n = z.shape[0]
    dz = np.exp(z - lse[:, None])
    dz[np.arange(n), t] -= 1
    return dz * (dloss / n)


def target_weights_numpy(z, t, p, weight, ignore_index, smoothing):
    """q: (M, K), the weight each log-probability gets in its row's loss (module docstring)."""
    m, k = z.shape
    if p is not None:
        return weight * ((1 - smoothing) * p + smoothing / k)
    hit = np.zeros((m, k), dtype=z.dtype)
    kept = t != ignore_index
    hit[np.arange(m)[kept], t[kept]] = 1 - smoothing
    q = weight * (hit + smoothing / k)
    q[~kept] = 0
    return q


def cross_entropy_options_forward_numpy(z, t, p, weight, ignore_index, smoothing):
    """z: (M, K); t: (M,) int or None; p: (M, K) or None; weight: (K,) -> losses, lse, Q,
    counted: (M,) (counted: what "mean" divides by, w[t] or 0 if ignored; 1 for p)."""
    q = target_weights_numpy(z, t, p, weight, ignore_index, smoothing)
    m = z.max(axis=1)
    log_sum = np.log(np.exp(z - m[:, None]).sum(axis=1))
    q_sum = q.sum(axis=1)
    # sum q (m - z) + Q log_sum rather than Q lse - sum q z: exact for logits of 1e4
    losses = (q * (m[:, None] - z)).sum(axis=1) + q_sum * log_sum
    if p is not None:
        counted = np.ones_like(m)
    else:
        counted = np.where(t == ignore_index, 0, weight[np.where(t == ignore_index, 0, t)])
    return losses, m + log_sum, q_sum, counted.astype(z.dtype)


def cross_entropy_options_backward_numpy(
    scale, z, t, p, weight, ignore_index, smoothing, lse, q_sum
):
    """scale: (M,) the reduction's factor per row -> dz: (M, K)."""
    q = target_weights_numpy(z, t, p, weight, ignore_index, smoothing)
    return scale[:, None] * (np.exp(z - lse[:, None]) * q_sum[:, None] - q)


# ---- CUDA (kernels/loss.cu) ----------------------------------------------------------------------
def cross_entropy_forward_cuda(z, t):
    n, k = z.shape
    xp = backend.xp("cuda")
    losses = xp.empty((n,), dtype=dtypes.compute_dtype(z.dtype))  # float32 for 16-bit z (loss.cu)
    lse = xp.empty((n,), dtype=dtypes.compute_dtype(z.dtype))
    cuda.launch(
        "loss",
        "cross_entropy_forward",
        z.dtype,
        (n,),
        (cuda.REDUCE_THREADS,),
        (z, t, losses, lse, *cuda.i32(n, k)),
    )
    return losses, lse


def cross_entropy_backward_cuda(dloss, z, t, lse):
    n, k = z.shape
    dz = backend.xp("cuda").empty_like(z)
    cuda.launch_1d(
        "loss",
        "cross_entropy_backward",
        z.dtype,
        z.size,
        (z, t, lse, dz, cuda.i64(z.size), cuda.i32(k), *cuda.real(z.dtype, float(dloss) / n)),
    )
    return dz


def cross_entropy_options_forward_cuda(z, t, p, weight, ignore_index, smoothing):
    m, k = z.shape
    xp = backend.xp("cuda")
    acc = dtypes.compute_dtype(z.dtype)  # float32 for 16-bit z (loss.cu)
    losses, lse, q_sum, counted = (xp.empty((m,), dtype=acc) for _ in range(4))
    soft = p is not None
    t = xp.zeros((1,), dtype=np.int32) if soft else t  # the unused one: a placeholder
    p = p if soft else xp.zeros((1,), dtype=z.dtype)
    cuda.launch(
        "loss",
        "cross_entropy_options_forward",
        z.dtype,
        (m,),
        (cuda.REDUCE_THREADS,),
        (
            z,
            t,
            p,
            weight,
            losses,
            lse,
            q_sum,
            counted,
            *cuda.i32(m, k, soft, ignore_index),
            *cuda.real(z.dtype, smoothing),
        ),
    )
    return losses, lse, q_sum, counted


def cross_entropy_options_backward_cuda(
    scale, z, t, p, weight, ignore_index, smoothing, lse, q_sum
):
    xp = backend.xp("cuda")
    soft = p is not None
    t = xp.zeros((1,), dtype=np.int32) if soft else t
    p = p if soft else xp.zeros((1,), dtype=z.dtype)
    dz = xp.empty_like(z)
    cuda.launch_1d(
        "loss",
        "cross_entropy_options_backward",
        z.dtype,
        z.size,
        (
            z,
            t,
            p,
            weight,
            lse,
            q_sum,
            scale,
            dz,
            cuda.i64(z.size),
            *cuda.i32(z.shape[1], soft, ignore_index),
            *cuda.real(z.dtype, smoothing),
        ),
    )
    return dz


# ---- autograd ------------------------------------------------------------------------------------
class CrossEntropyFunction(Function):
    @staticmethod
    def forward(ctx, z, t):
        # z: (N, K) logits, t: (N,) int32 class indices -> scalar mean loss
        if ctx.device == "cuda":
            z = backend.xp("cuda").ascontiguousarray(z)
            losses, lse = cross_entropy_forward_cuda(z, t)
        else:
            losses, lse = cross_entropy_forward_numpy(z, t)
        ctx.save(z, t, lse)
        return losses.mean().astype(z.dtype, copy=False)  # 16-bit z: float32 losses, one rounding

    @staticmethod
    def backward(ctx, dloss):
        z, t, lse = ctx.saved
        if ctx.device == "cuda":
            return cross_entropy_backward_cuda(dloss, z, t, lse), None
        return cross_entropy_backward_numpy(dloss, z, t, lse), None


class CrossEntropyOptionsFunction(Function):
    @staticmethod
    def forward(ctx, z, t, p, weight, ignore_index, smoothing, reduction):
        # z: (M, K) logits; t: (M,) int32 classes, or p: (M, K) probabilities; weight: (K,)
        # -> losses (M,) for reduction "none", else a scalar
        options = (weight, ignore_index, smoothing)
        if ctx.device == "cuda":
            z = backend.xp("cuda").ascontiguousarray(z)
            losses, lse, q_sum, counted = cross_entropy_options_forward_cuda(z, t, p, *options)
        else:
            losses, lse, q_sum, counted = cross_entropy_options_forward_numpy(z, t, p, *options)
        denominator = counted.sum() if reduction == "mean" else None
        ctx.save(z, t, p, options, lse, q_sum, reduction, denominator)
        # 16-bit z: losses are float32 on the GPU (loss.cu), rounded to z's dtype once, here
        if reduction == "none":
            return losses.astype(z.dtype, copy=False)
        if reduction == "sum":
            return losses.sum().astype(z.dtype, copy=False)
        with np.errstate(invalid="ignore", divide="ignore"):  # every target ignored: 0/0 = nan
            return (losses.sum() / denominator).astype(z.dtype, copy=False)

    @staticmethod
    def backward(ctx, dloss):
        z, t, p, options, lse, q_sum, reduction, denominator = ctx.saved
        xp = backend.xp(ctx.device)
        if reduction == "mean":
            with np.errstate(invalid="ignore", divide="ignore"):
                dloss = dloss / denominator
        scale = xp.ascontiguousarray(xp.broadcast_to(dloss, lse.shape), dtype=lse.dtype)
        if ctx.device == "cuda":
            dz = cross_entropy_options_backward_cuda(scale, z, t, p, *options, lse, q_sum)
        else:
            dz = cross_entropy_options_backward_numpy(scale, z, t, p, *options, lse, q_sum)
        return dz, None, None, None


def cross_entropy(
    logits: Tensor,
    target,
    weight=None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Softmax cross-entropy from logits, with PyTorch's options.

    logits: (N, K), unbatched (K,), or (N, K, d1, ...). target: integer class indices of the
    logits' shape without the class axis ((N,), (), (N, d1, ...)), each in [0, K) or equal to
    ``ignore_index`` (that element counts for nothing); or class probabilities, a float tensor of
    the logits' shape. ``weight``: (K,) per-class weights. ``reduction``: "mean" (over elements
    not ignored, weighted by their class's weight), "sum" or "none" (a loss per element, of the
    target's shape). ``label_smoothing`` eps in [0, 1] mixes the target with the uniform
    distribution: (1 - eps) target + eps / K. The formulas are in the module docstring.
    """
    k = _check_logits(logits, reduction, label_smoothing)
    t = _target_array(target)
    soft = dtypes.kind(t.dtype) == "f"
    if soft:
        _check_probabilities(t, logits, ignore_index)
    else:
        t = _check_classes(t, logits, k, ignore_index)
    w = _class_weights(weight, k, logits)
    z = logits  # rows: the class axis last, (N, K, d1, ...) -> (N*d1*..., K)
    if z.ndim != 2:  # (K,) or (N, K, d1, ...); AlexNet's (N, K) goes through unchanged
        z = z.reshape(1, k) if z.ndim == 1 else z.permute(0, *range(2, z.ndim), 1).reshape(-1, k)
    device, xp = logits.device, backend.xp(logits.device)
    options = soft or w is not None or reduction != "mean" or label_smoothing != 0.0
    if not options and not (t == ignore_index).any():
        # AlexNet's loss, one reduction kernel and one element-wise kernel: about 1.9x faster than
        # the general path on the CPU (46 vs 86 us forward+backward at (128, 10), 268 vs 536 us
        # at (128, 1000)), though under 0.1% of a training step
        return CrossEntropyFunction.apply(z, backend.move(t.reshape(-1).astype(np.int32), device))
    if soft:
        p = backend.move(t, device)
        p = xp.moveaxis(p, 1, -1) if p.ndim > 2 else p
        p_rows, t_rows = xp.ascontiguousarray(p.reshape(-1, k)), None
    else:
        p_rows, t_rows = None, backend.move(t.reshape(-1).astype(np.int32), device)
    w = xp.ones((k,), dtype=logits.dtype) if w is None else w
    losses = CrossEntropyOptionsFunction.apply(
        z, t_rows, p_rows, w, ignore_index=int(ignore_index),
        smoothing=float(label_smoothing), reduction=reduction,
    )  # fmt: skip
    if reduction != "none":
        return losses
    return losses.reshape(logits.shape[:1] + logits.shape[2:] if logits.ndim > 1 else ())


# ---- cross_entropy's argument checks -------------------------------------------------------------
def _check_logits(logits, reduction: str, label_smoothing: float) -> int:
    """The logits, reduction and smoothing, checked; returns the number of classes K."""
    require_tensor("cross_entropy", "logits", logits)
    if logits.ndim == 0:
        raise ValueError(
            "cross_entropy: logits must be (N, classes), (classes,) or (N, classes, ...)"
        )
    if dtypes.kind(logits.dtype) != "f":
        raise TypeError(f"cross_entropy: logits must be floating point, got dtype {logits.dtype}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(
            f"cross_entropy: reduction must be 'mean', 'sum' or 'none', got {reduction!r}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy: label_smoothing must lie in [0, 1], got {label_smoothing!r}"
        )
    return logits.shape[0 if logits.ndim == 1 else 1]


def _target_array(target):
    """The target's array: a Tensor's (never one that wants a gradient), a list's, an array."""
    if isinstance(target, GraphTensor) and target.requires_grad:
        raise ValueError(
            "cross_entropy: gradients with respect to the target are not supported; "
            "pass target.detach()"
        )
    t = target.data if isinstance(target, GraphTensor) else target
    return np.asarray(t) if isinstance(t, (list, tuple, int, float)) else t


def _check_probabilities(t, logits, ignore_index: int) -> None:
    if t.shape != logits.shape:
        raise ValueError(
            f"cross_entropy: probability target has shape {t.shape}, expected the logits' "
            f"shape {logits.shape}"
        )
    if t.dtype != logits.dtype:
        raise TypeError(
            f"cross_entropy: probability target has dtype {t.dtype}, expected the logits' "
            f"dtype {logits.dtype}"
        )
    if ignore_index != -100:
        raise ValueError(
            "cross_entropy: ignore_index is not supported for probability targets (as in PyTorch)"
        )


def _check_classes(t, logits, k: int, ignore_index: int) -> np.ndarray:
    """Class indices of the logits' shape without the class axis, each in [0, K) or ignored;
    returned as a NumPy array (the checks read every value)."""
    if t.dtype.kind not in "iu":
        raise TypeError(
            f"cross_entropy: target must hold integer class indices or float probabilities, "
            f"got dtype {t.dtype}"
        )
    element_shape = logits.shape[:1] + logits.shape[2:] if logits.ndim > 1 else ()
    if t.shape != element_shape:
        raise ValueError(
            f"cross_entropy: target has shape {t.shape}, expected {element_shape} for "
            f"logits of shape {logits.shape}"
        )
    t = backend.to_numpy(t)
    bad = (t != ignore_index) & ((t < 0) | (t >= k))
    if bad.any():
        raise ValueError(
            f"cross_entropy: target values must lie in [0, {k}) or equal ignore_index "
            f"{ignore_index}, got {t[bad].ravel()[0]}"
        )
    return t


def _class_weights(weight, k, logits):
    """cross_entropy's ``weight``: None, or a (K,) array on the logits' device and dtype."""
    if weight is None:
        return None
    w = weight.data if isinstance(weight, GraphTensor) else weight
    if isinstance(w, (list, tuple)):
        w = np.asarray(w, dtype=logits.dtype)  # Python numbers carry no dtype of their own
    if w.shape != (k,):
        raise ValueError(f"cross_entropy: weight has shape {w.shape}, expected ({k},)")
    if w.dtype != logits.dtype:
        raise TypeError(
            f"cross_entropy: weight has dtype {w.dtype}, expected the logits' dtype {logits.dtype}"
        )
    return backend.move(w, logits.device)
