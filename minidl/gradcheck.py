"""Check analytic gradients against central differences, in float64.

For a function y = fn(*inputs), gradcheck takes a fixed random projection L = sum(y * v), so one
backward pass gives dL/dx for every input, and compares each element with

    (L(x + eps * e_i) - L(x - eps * e_i)) / (2 * eps)

An element passes when |analytic - numeric| <= atol + rtol * |numeric|. A random v (rather than
one backward per output element) tests every output's gradient at once; an error that cancels
in the projection would need to be orthogonal to a random vector.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from minidl import backend
from minidl.autograd import no_grad
from minidl.tensor import Tensor


class GradcheckError(AssertionError):
    """Analytic and numerical gradients disagree; the message has a per-input report."""


def gradcheck(
    fn: Callable[..., Tensor],
    inputs: Tensor | Sequence,
    eps: float = 1e-6,
    atol: float = 1e-5,
    rtol: float = 1e-3,
    seed: int = 0,
) -> bool:
    """True when every input that requires grad has matching gradients; raises otherwise.

    ``inputs`` is a tensor or a sequence of arguments for ``fn`` (tensors and anything else).
    Tensors that require grad are checked; they must be float64. ``fn`` must be deterministic
    (inject dropout masks).
    """
    args = [inputs] if isinstance(inputs, Tensor) else list(inputs)
    checked = [i for i, a in enumerate(args) if isinstance(a, Tensor) and a.requires_grad]
    if not checked:
        raise ValueError("gradcheck: no input tensor has requires_grad=True")
    for i in checked:
        if args[i].dtype != np.float64:
            raise TypeError(
                f"gradcheck: input {i} is {args[i].dtype}; finite differences need float64 "
                "(use .double())"
            )

    saved_grads = [args[i].grad for i in checked]
    for i in checked:
        args[i].grad = None
    try:
        out = fn(*args)
        if not isinstance(out, Tensor):
            raise TypeError(f"gradcheck: fn must return a Tensor, got {type(out).__name__}")
        rng = np.random.default_rng(seed)
        v = backend.move(rng.standard_normal(out.shape), out.device).astype(out.dtype)
        out.backward(v)
        analytic = {i: _grad_or_zeros(args[i]) for i in checked}

        def projected() -> float:
            with no_grad():
                return float((fn(*args).data * v).sum())

        reports = [
            _compare(i, analytic[i], _numeric_gradient(projected, args[i].data, eps), atol, rtol)
            for i in checked
        ]
    finally:
        for i, grad in zip(checked, saved_grads):
            args[i].grad = grad
    failures = [report for report in reports if report]
    if failures:
        raise GradcheckError("gradcheck failed:\n" + "\n".join(failures))
    return True


def _numeric_gradient(projected: Callable[[], float], data, eps: float) -> np.ndarray:
    """Central differences of ``projected()`` over each element of ``data``, nudged in place."""
    numeric = np.zeros(data.shape)
    for index in np.ndindex(*data.shape):
        original = data[index].item()
        data[index] = original + eps
        plus = projected()
        data[index] = original - eps
        minus = projected()
        data[index] = original
        numeric[index] = (plus - minus) / (2 * eps)
    return numeric


def _grad_or_zeros(t: Tensor) -> np.ndarray:
    if t.grad is None:  # the output does not depend on this input
        return np.zeros(t.shape)
    return backend.to_numpy(t.grad.data).astype(np.float64)


def _compare(position: int, analytic, numeric, atol: float, rtol: float) -> str:
    error = np.abs(analytic - numeric)
    bad = error > atol + rtol * np.abs(numeric)
    if not bad.any():
        return ""
    relative = error / np.maximum(np.abs(numeric), 1e-300)
    worst = np.unravel_index(np.argmax(np.where(bad, error, -1)), error.shape)
    return (
        f"  input {position} (shape {analytic.shape}): {int(bad.sum())} of {bad.size} elements "
        f"differ; max abs error {error.max():.3e}, max rel error {relative[bad].max():.3e}; "
        f"worst at index {tuple(int(k) for k in worst)}: analytic {analytic[worst]:.10g}, "
        f"numerical {numeric[worst]:.10g}"
    )
