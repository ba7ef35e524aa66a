"""Random geometries: conv2d, max_pool2d and local_response_norm on the kernels against the NumPy
path and PyTorch (float64, forward and every input gradient).

The explicit case lists in each op's tests name the branches; this draws strides, paddings,
dilations, groups, kernel and image sizes at random (fixed seeds) to catch what no list thought
of. Batch sizes up to 64 make the weight gradient long enough to be split on a GPU (split-K). A
few cases run under the emulator on every machine; the whole draw runs on a GPU.
"""

import functools

import numpy as np
import pytest

import minidl.functional as F
from minidl import backend
from tests.helpers import forward_backward, random, torch_forward_backward

TOL = dict(rtol=1e-9, atol=1e-9)


def draw(rng, case):
    """One conv, one pool and one LRN problem: (name, our fn, torch fn, arrays)."""
    groups = int(rng.choice([1, 1, 2, 3]))
    c, o = groups * int(rng.integers(1, 5)), groups * int(rng.integers(1, 5))
    kh, kw = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    sh, sw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    ph, pw = int(rng.integers(0, kh)), int(rng.integers(0, kw))
    dh, dw = int(rng.choice([1, 1, 2, 3])), int(rng.choice([1, 1, 2, 3]))
    reach_h, reach_w = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # the dilated kernel
    h = int(rng.integers(max(1, reach_h - 2 * ph), 40 + reach_h))
    w = int(rng.integers(max(1, reach_w - 2 * pw), 40 + reach_w))
    n = int(rng.integers(1, 9)) * (8 if case % 10 == 0 else 1)
    conv = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    arrays = [random((n, c, h, w), case), random((o, c // groups, kh, kw), case + 1)]
    arrays.append(random((o,), case + 2))
    yield (
        f"conv2d x{arrays[0].shape} w{arrays[1].shape} {conv}",
        lambda x, w, b: F.conv2d(x, w, b, **conv),
        lambda torch, x, w, b: torch.nn.functional.conv2d(x, w, b, **conv),
        arrays,
    )
    k, s, d = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.choice([1, 1, 2, 3]))
    pool = dict(kernel_size=k, stride=s, padding=int(rng.integers(0, k // 2 + 1)), dilation=d)
    pool["ceil_mode"] = bool(rng.integers(0, 2))
    reach = d * (k - 1) + 1
    x = random((2, 3, int(rng.integers(reach, 30)), int(rng.integers(reach, 30))), case + 3)
    yield (
        f"max_pool2d x{x.shape} {pool}",
        lambda x: F.max_pool2d(x, **pool),
        lambda torch, x: torch.nn.functional.max_pool2d(x, **pool),
        [x],
    )
    size, alpha = int(rng.choice([1, 3, 5, 7])), float(rng.uniform(1e-4, 1.0))
    beta, kk = float(rng.uniform(0.5, 1.0)), float(rng.uniform(0.5, 2.0))
    x = random((2, int(rng.integers(1, 12)), 5, 4), case + 4)
    yield (
        f"local_response_norm x{x.shape} size={size} alpha={alpha} beta={beta} k={kk}",
        lambda x: F.local_response_norm(x, size, alpha, beta, kk),
        # torch divides alpha by size; ours follows the paper (see minidl/ops/lrn.py)
        lambda torch, x: torch.nn.functional.local_response_norm(x, size, alpha * size, beta, kk),
        [x],
    )


def test_random_geometries(kernel_device):
    cases = 4 if backend.emulating() else 300  # the emulator is slow; a GPU takes seconds
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    failures = []
    for case in range(cases):
        for name, fn, torch_fn, arrays in draw(rng, case):
            y, grads = forward_backward(fn, arrays, kernel_device)
            y_np, grads_np = forward_backward(fn, arrays, "cpu")
            y_t, grads_t = torch_forward_backward(torch, functools.partial(torch_fn, torch), arrays)
            ok = np.allclose(y, y_np, **TOL) and np.allclose(y, y_t, **TOL)
            for g, g_np, g_t in zip(grads, grads_np, grads_t):
                ok = ok and np.allclose(g, g_np, **TOL) and np.allclose(g, g_t, **TOL)
            if not ok:
                failures.append(f"case {case}: {name}")
    assert not failures, "\n".join(failures)
