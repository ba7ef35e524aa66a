"""Shared test helpers: run an op on a device and collect its output and input gradients.

A torch parity test is one call, as tinygrad's ``helper_test_op``::

    check_op([(2, 3, 5, 5), (4, 3, 3, 3)], "nn.functional.conv2d", F.conv2d)
    check_op([x, targets], "nn.functional.cross_entropy", F.cross_entropy)

compares minidl's forward and every input gradient with PyTorch's in float64 (the same ``dy``)
and runs ``minidl.gradcheck`` (see ``check_op``). Shapes become seeded random inputs; arrays are
used as given (integer arrays, e.g. class targets, are passed along without a gradient).
"""

import numpy as np
import pytest

import minidl as mdl
from minidl import data, nn


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


def check_op(inputs, torch_fn, minidl_fn, *, seed=0, gradcheck=True):
    """Compare ``minidl_fn`` with ``torch_fn`` in float64: the forward and the gradient of every
    floating-point input, for one random ``dy``; then ``mdl.gradcheck(minidl_fn, ...)``.

    ``inputs``: for each argument, a shape (a tuple: standard-normal values, seeded by position),
    an array (a float array gets a gradient; an integer array, or anything else, is passed to both
    functions as a constant). ``torch_fn``: a callable on torch tensors (``lambda x: x.relu()``)
    or the dotted name of a torch function (``"nn.functional.linear"``), so a test file need not
    import torch. The gradcheck runs first, without torch; the comparison is skipped where torch
    is not installed. Returns minidl's output and gradients as NumPy arrays.
    """
    arrays = [random(a, seed + i) if isinstance(a, tuple) else a for i, a in enumerate(inputs)]
    floats = [isinstance(a, np.ndarray) and a.dtype.kind == "f" for a in arrays]

    def minidl_args():
        return [
            mdl.tensor(a.astype(np.float64), requires_grad=True) if f else a
            for a, f in zip(arrays, floats)
        ]

    if gradcheck:
        assert mdl.gradcheck(minidl_fn, minidl_args())
    args = minidl_args()
    y = minidl_fn(*args)
    dy = np.random.default_rng(seed + 1000).standard_normal(y.shape)
    y.backward(dy)
    grads = [a.grad.numpy() if f else None for a, f in zip(args, floats)]

    torch = pytest.importorskip("torch")
    if isinstance(torch_fn, str):
        name, torch_fn = torch_fn, torch
        for part in name.split("."):
            torch_fn = getattr(torch_fn, part)
    torch_args = [
        torch.tensor(a, dtype=torch.float64, requires_grad=True)
        if f
        else (torch.as_tensor(a) if isinstance(a, np.ndarray) else a)
        for a, f in zip(arrays, floats)
    ]
    torch_y = torch_fn(*torch_args)
    torch_y.backward(torch.tensor(dy))
    assert y.shape == tuple(torch_y.shape), f"output shape {y.shape} vs torch's {torch_y.shape}"
    assert_close(y.numpy(), torch_y.detach().numpy(), what="forward")
    for i, (g, t, f) in enumerate(zip(grads, torch_args, floats)):
        if f:
            assert_close(g, t.grad.numpy(), what=f"gradient of input {i}")
    return y.numpy(), grads


# ---- a tiny training problem (tests/test_training.py, test_faults.py, test_precision_training.py)
def tiny_dataset(size, nan_image=None, dtype=np.float32):
    """``size`` random 12x12 gray images with 3-class labels, scaled to [0, 1] when loaded.
    ``nan_image``: the index of an image whose pixel (3, 4) is NaN."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, 12, 12)).astype(dtype)
    if nan_image is not None:
        images[nan_image, 3, 4] = np.nan
    labels = rng.integers(0, 3, size)
    return data.ArrayDataset(images, labels, lambda x, rng: x / 255.0)


def tiny_net(channels=4, dropout=None):
    """An AlexNet in miniature for tiny_dataset's images: conv, ReLU, overlapping max-pool,
    (dropout,) a linear classifier. (N, 1, 12, 12) -> (N, 3)."""
    layers = [nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(3, 2)]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 4 * 4, 3))
