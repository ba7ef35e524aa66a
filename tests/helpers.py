"""Shared test helpers: run an op on a device and collect its output and input gradients."""

import numpy as np

import minidl as mdl


def random(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def distinct(shape, seed=0):
    """Values with no ties (a shuffled ramp plus noise): max-pool gradients are then unambiguous."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size) / size * 4 - 2 + rng.uniform(0, 1e-3, size)).reshape(shape)


def forward_backward(fn, arrays, device="cpu", dtype=np.float64, seed=0):
    """fn(*tensors) on ``device``; returns (y, [d(sum(y * dy))/d input]) as float64 NumPy."""
    mdl.manual_seed(seed)
    tensors = [
        None
        if a is None
        else mdl.tensor(np.asarray(a, dtype=dtype), requires_grad=True, device=device)
        for a in arrays
    ]
    y = fn(*tensors)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    grads = [None if t is None else t.grad.numpy().astype(np.float64) for t in tensors]
    return y.numpy().astype(np.float64), grads


def torch_forward_backward(torch, fn, arrays, seed=0):
    """The same with PyTorch in float64, and the same dy."""
    tensors = [
        None if a is None else torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
        for a in arrays
    ]
    y = fn(*tensors)
    dy = np.random.default_rng(seed + 1).standard_normal(tuple(y.shape))
    y.backward(torch.tensor(dy))
    grads = [None if t is None else t.grad.numpy() for t in tensors]
    return y.detach().numpy(), grads


def assert_close(actual, expected, dtype=np.float64, what=""):
    rtol, atol = (1e-9, 1e-10) if dtype == np.float64 else (2e-4, 2e-5)
    scale = max(1.0, float(np.abs(expected).max())) if np.size(expected) else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def assert_all_close(result, expected, dtype=np.float64):
    (y, grads), (y_ref, grads_ref) = result, expected
    assert_close(y, y_ref, dtype, "forward")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        if g_ref is not None:
            assert_close(g, g_ref, dtype, f"gradient of input {i}")
