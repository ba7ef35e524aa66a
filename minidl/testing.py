"""Helpers for testing ops and models: what minidl's own tests use, public (as ``torch.testing``).

    from minidl import testing

    testing.check_op([(2, 3, 5, 5), (4, 3, 3, 3)], "nn.functional.conv2d", F.conv2d)
    testing.check_kernel(F.relu, [(3, 5, 7)], np.float32)      # GPU branch vs NumPy path
    testing.gradcheck(fn, [x64])                                 # float64 finite differences
    twin = testing.torch_twin(model)                             # the same network in PyTorch

- ``check_op``: an op against PyTorch in float64, the forward and every input gradient for the
  same ``dy``, after ``gradcheck`` (tinygrad's ``helper_test_op``).
- ``check_kernel``: an op's GPU branch (``device="cuda"``: a real GPU, or the kernel emulator
  under ``MINIDL_CUDA_EMULATE=1``) against its NumPy path, forward and gradients, within
  ``TOLERANCE`` of the dtype.
- ``gradcheck``: ``minidl.gradcheck`` itself.
- ``torch_twin``: a ``torch.nn.Module`` built layer by layer from a minidl model, our weights
  copied in: an oracle for a whole network.

Inputs are given as in ``check_op``: a shape (a tuple) becomes seeded standard-normal values, an
array is used as given; float arrays get gradients, anything else (integer class targets) is
passed to the function as a constant. PyTorch is imported inside the functions that need it and
is never a dependency of minidl; without it they raise ``TorchMissing``. Page: docs/testing.md.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from minidl import backend, dtypes, nn
from minidl.gradcheck import GradcheckError, gradcheck
from minidl.gradcheck import gradcheck as _gradcheck
from minidl.random import manual_seed
from minidl.tensor import tensor

__all__ = [
    "TOLERANCE",
    "GradcheckError",
    "TorchMissing",
    "assert_all_close",
    "assert_close",
    "check_kernel",
    "check_op",
    "distinct_array",
    "forward_backward",
    "gradcheck",
    "random_array",
    "torch_forward_backward",
    "torch_twin",
]

# (rtol, atol) per dtype; atol is scaled by max(1, max |expected|). float64 paths differ only by
# the order of their sums; float32 by a few ulps of a sum over hundreds of terms; 16-bit storage
# by a few units in its last place (kernels accumulate in float32 and round once).
TOLERANCE = {
    "float64": (1e-9, 1e-10),
    "float32": (2e-4, 2e-5),
    "float16": (4e-3, 4e-3),
    "bfloat16": (3.2e-2, 3.2e-2),
}


class TorchMissing(ImportError):
    """A helper that compares with PyTorch was called where PyTorch is not installed."""


def _import_torch(helper: str):
    try:
        import torch
    except ImportError as err:
        raise TorchMissing(
            f"minidl.testing.{helper} compares with PyTorch, which is not installed here "
            "(pip install torch)"
        ) from err
    return torch


# ---- inputs --------------------------------------------------------------------------------------
def random_array(shape, seed: int = 0) -> np.ndarray:
    """Seeded standard-normal values, float64."""
    return np.random.default_rng(seed).standard_normal(shape)


def distinct_array(shape, seed: int = 0) -> np.ndarray:
    """Values with no ties (a shuffled ramp plus noise): max-pool gradients are then unambiguous."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    return (rng.permutation(size) / size * 4 - 2 + rng.uniform(0, 1e-3, size)).reshape(shape)


def _arrays(inputs: Sequence, seed: int) -> list:
    """A shape (tuple) becomes random_array(shape, seed + position); anything else stays."""
    return [random_array(a, seed + i) if isinstance(a, tuple) else a for i, a in enumerate(inputs)]


def _is_float_array(a) -> bool:
    """An input that gets a gradient; anything else (None, class targets) is a constant."""
    return isinstance(a, np.ndarray) and dtypes.kind(a.dtype) == "f"  # bfloat16 included


# ---- comparing -----------------------------------------------------------------------------------
def assert_close(actual, expected, dtype=np.float64, what: str = "") -> None:
    """``np.testing.assert_allclose`` with ``TOLERANCE[dtype]``; atol scales with the values."""
    name = np.dtype(dtype).name
    if name not in TOLERANCE:
        raise ValueError(f"assert_close: no tolerance for {name}; known: {sorted(TOLERANCE)}")
    rtol, atol = TOLERANCE[name]
    scale = max(1.0, float(np.abs(expected).max())) if np.size(expected) else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=what)


def assert_all_close(result, expected, dtype=np.float64) -> None:
    """Both (y, [gradients]) pairs agree: the forward, and each gradient ``expected`` has."""
    (y, grads), (y_ref, grads_ref) = result, expected
    assert_close(y, y_ref, dtype, "forward")
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        if g_ref is not None:
            assert_close(g, g_ref, dtype, f"gradient of input {i}")


def forward_backward(fn: Callable, arrays: Sequence, device="cpu", dtype=np.float64, seed=0):
    """``fn(*tensors)`` on ``device`` in ``dtype``, backward with a seeded ``dy``; returns
    (y, [d sum(y * dy) / d input]) as float64 NumPy arrays (None for a constant input).

    A float array becomes a tensor with a gradient; anything else (None, integer class targets)
    is passed as given.
    ``manual_seed(seed)`` runs first, so dropout draws the same mask on every device.
    """
    manual_seed(seed)
    tensors = [
        tensor(np.asarray(a, dtype=dtype), requires_grad=True, device=device)
        if _is_float_array(a)
        else a
        for a in arrays
    ]
    y = fn(*tensors)
    dy = np.random.default_rng(seed + 1).standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    grads = [
        t.grad.numpy().astype(np.float64) if _is_float_array(a) else None
        for a, t in zip(arrays, tensors)
    ]
    return y.numpy().astype(np.float64), grads


def torch_forward_backward(fn: Callable, arrays: Sequence, seed: int = 0):
    """``forward_backward`` with PyTorch in float64 and the same ``dy``; ``fn`` takes torch
    tensors."""
    torch = _import_torch("torch_forward_backward")
    tensors = [
        torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)
        if _is_float_array(a)
        else (torch.as_tensor(a) if isinstance(a, np.ndarray) else a)
        for a in arrays
    ]
    y = fn(*tensors)
    dy = np.random.default_rng(seed + 1).standard_normal(tuple(y.shape))
    y.backward(torch.tensor(dy))
    grads = [t.grad.numpy() if _is_float_array(a) else None for a, t in zip(arrays, tensors)]
    return y.detach().numpy(), grads


# ---- one call per check --------------------------------------------------------------------------
def check_op(inputs: Sequence, torch_fn, minidl_fn: Callable, *, seed=0, gradcheck=True):
    """Compare ``minidl_fn`` with ``torch_fn`` in float64: the forward and the gradient of every
    floating-point input, for one random ``dy``; first ``minidl.gradcheck(minidl_fn, ...)``.

    ``inputs``: for each argument, a shape (standard-normal values, seeded by position) or an
    array (a float array gets a gradient; anything else is a constant for both functions).
    ``torch_fn``: a callable on torch tensors (``lambda x: x.relu()``) or the dotted name of a
    torch function (``"nn.functional.linear"``), so a test file need not import torch. The
    gradcheck runs before torch is imported (``TorchMissing`` where it is not installed).
    Returns minidl's output and gradients as NumPy arrays.
    """
    arrays = _arrays(inputs, seed)
    floats = [_is_float_array(a) for a in arrays]

    def minidl_args():
        return [
            tensor(a.astype(np.float64), requires_grad=True) if f else a
            for a, f in zip(arrays, floats)
        ]

    if gradcheck:
        assert _gradcheck(minidl_fn, minidl_args())  # the parameter hides the name
    args = minidl_args()
    y = minidl_fn(*args)
    dy = np.random.default_rng(seed + 1000).standard_normal(y.shape)
    y.backward(dy)
    grads = [a.grad.numpy() if f else None for a, f in zip(args, floats)]

    torch = _import_torch("check_op")
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
    assert y.shape == tuple(torch_y.shape), f"output shape {y.shape} vs torch's {torch_y.shape}"
    torch_y.backward(torch.tensor(dy))
    assert_close(y.numpy(), torch_y.detach().numpy(), what="forward")
    for i, (g, t, f) in enumerate(zip(grads, torch_args, floats)):
        if f:
            assert_close(g, t.grad.numpy(), what=f"gradient of input {i}")
    return y.numpy(), grads


def check_kernel(fn: Callable, inputs: Sequence, dtype=np.float32, *, seed=0, device="cuda"):
    """Compare ``fn``'s GPU branch with its NumPy path: the same inputs (cast to ``dtype``), the
    same ``dy``, the same ``manual_seed``; forward and every gradient within ``TOLERANCE[dtype]``.

    ``device="cuda"`` runs our kernels on a GPU, or on the CPU under ``MINIDL_CUDA_EMULATE=1``.
    ``inputs`` as in ``check_op``. Returns the GPU branch's (y, [gradients]) as float64.
    """
    arrays = _arrays(inputs, seed)
    expected = forward_backward(fn, arrays, "cpu", dtype, seed)
    result = forward_backward(fn, arrays, device, dtype, seed)
    assert_all_close(result, expected, dtype)
    return result


# ---- a PyTorch twin of a model -------------------------------------------------------------------
def torch_twin(model: nn.Module):
    """A ``torch.nn.Module`` that computes what ``model`` computes, with its weights and buffers
    copied in, in its dtype and its train/eval mode, on the CPU.

    Layers: Conv2d (stride, padding, dilation, groups), Linear, ReLU, LocalResponseNorm (torch's
    alpha is ours times ``size``: it divides by ``size``, we follow the paper), MaxPool2d, Dropout,
    Flatten, BatchNorm1d/2d, Sigmoid, Tanh, Softmax, LogSoftmax, Identity. A container (an
    ``nn.Sequential``, or a Module whose ``forward`` applies its children in the order they were
    assigned, as AlexNet's ``features`` then ``classifier``) becomes a ``torch.nn.Sequential``
    with the same names, so both state dicts have the same keys. Dropout draws its own masks in
    each framework: compare in eval mode.
    """
    torch = _import_torch("torch_twin")
    twin = _twin_layer(torch, model)
    state = OrderedDict(model.named_state())
    dtypes = {p.dtype for p in state.values() if p.dtype.kind == "f"}  # not BN's int counter
    if len(dtypes) > 1:
        raise TypeError(f"torch_twin: the model mixes dtypes {sorted(map(str, dtypes))}")
    if dtypes:
        twin.to(_torch_dtype(torch, dtypes.pop()))
    twin_state = twin.state_dict()
    with torch.no_grad():
        for name, value in state.items():
            twin_state[name].copy_(_to_torch(torch, backend.to_numpy(value.data)))
    return twin.train(model.training)


def _twin_layer(torch, layer: nn.Module):
    tnn = torch.nn
    if isinstance(layer, nn.Conv2d):
        return tnn.Conv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            bias=layer.bias is not None,
        )
    if isinstance(layer, nn.Linear):
        return tnn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    if isinstance(layer, nn.LocalResponseNorm):
        return tnn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    if isinstance(layer, nn.MaxPool2d):
        return tnn.MaxPool2d(
            layer.kernel_size,
            layer.stride,
            layer.padding,
            layer.dilation,
            ceil_mode=layer.ceil_mode,
        )
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
        kind = tnn.BatchNorm2d if isinstance(layer, nn.BatchNorm2d) else tnn.BatchNorm1d
        return kind(
            layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats
        )
    if isinstance(layer, nn.Dropout):
        return tnn.Dropout(layer.p, layer.inplace)
    if isinstance(layer, nn.Flatten):
        return tnn.Flatten(layer.start_dim, layer.end_dim)
    if isinstance(layer, nn.ReLU):
        return tnn.ReLU(layer.inplace)
    if isinstance(layer, (nn.Softmax, nn.LogSoftmax)):
        return getattr(tnn, type(layer).__name__)(layer.dim)
    if isinstance(layer, (nn.Sigmoid, nn.Tanh, nn.Identity)):
        return getattr(tnn, type(layer).__name__)()
    children = list(layer._modules.items())
    if not children:
        raise TypeError(f"torch_twin: no PyTorch twin for {type(layer).__name__}")
    return tnn.Sequential(OrderedDict((name, _twin_layer(torch, m)) for name, m in children))


def _torch_dtype(torch, dtype):
    name = np.dtype(dtype).name
    if not hasattr(torch, name):
        raise TypeError(f"torch_twin: PyTorch has no {name}")
    return getattr(torch, name)


def _to_torch(torch, array: np.ndarray):
    if array.dtype.name == "bfloat16":  # torch cannot read ml_dtypes' bfloat16 arrays
        return torch.tensor(array.astype(np.float32)).to(torch.bfloat16)
    return torch.tensor(array)
