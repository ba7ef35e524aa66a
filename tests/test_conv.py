import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    forward_backward,
    random,
    torch_forward_backward,
)

# (N, C, H, W, O, kh, kw, stride, padding, groups): every branch in an explicit list.
CASES = [
    pytest.param((2, 3, 7, 7, 4, 3, 3, 1, 0, 1), id="k3-s1-p0"),
    pytest.param((1, 3, 9, 8, 4, 3, 3, 1, 1, 1), id="batch1-nonsquare-p1"),
    pytest.param((2, 4, 9, 11, 6, 3, 3, 2, 1, 2), id="s2-p1-g2"),
    pytest.param((2, 6, 8, 7, 6, 5, 5, 1, 2, 3), id="k5-p2-g3"),
    pytest.param((1, 3, 23, 23, 4, 11, 11, 4, 0, 1), id="k11-s4-conv1-like"),
    pytest.param((2, 4, 6, 5, 4, 1, 1, 1, 0, 2), id="k1-g2"),
    pytest.param((2, 3, 10, 9, 2, 3, 2, 2, 2, 1), id="k3x2-s2-p2"),
    pytest.param((1, 2, 7, 7, 3, 3, 3, (2, 1), (1, 0), 1), id="pair-stride-padding"),
]


def make(case, seed=0):
    n, c, h, w, o, kh, kw, stride, padding, groups = case
    x = random((n, c, h, w), seed)
    weight = random((o, c // groups, kh, kw), seed + 1)
    bias = random((o,), seed + 2)
    return (x, weight, bias), dict(stride=stride, padding=padding, groups=groups)


def pairs(kw):
    as_pair = lambda v: (v, v) if isinstance(v, int) else v  # noqa: E731
    return as_pair(kw["stride"]), as_pair(kw["padding"]), kw["groups"]


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_naive_reference(case):
    (x, w, b), kw = make(case)
    y = F.conv2d(mdl.tensor(x), mdl.tensor(w), mdl.tensor(b), **kw).numpy()
    assert_close(y, reference.conv2d(x, w, b, *pairs(kw)))


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case):
    n, c, h, w, o, kh, kw_, stride, padding, groups = case
    small = (1, c, min(h, 7), min(w, 7), o, min(kh, 3), min(kw_, 3), stride, padding, groups)
    (x, w, b), kw = make(small)
    inputs = [mdl.tensor(a, requires_grad=True) for a in (x, w, b)]
    assert mdl.gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), inputs)


@pytest.mark.parametrize("case", CASES)
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    (x, w, b), kw = make(case)
    ours = forward_backward(lambda x, w, b: F.conv2d(x, w, b, **kw), (x, w, b))
    theirs = torch_forward_backward(
        torch, lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kw), (x, w, b)
    )
    assert_all_close(ours, theirs)


def test_without_bias():
    (x, w, _), kw = make(CASES[2].values[0])
    inputs = [mdl.tensor(a, requires_grad=True) for a in (x, w)]
    assert mdl.gradcheck(lambda x, w: F.conv2d(x, w, None, **kw), inputs)


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_numpy(case, kernel_device, dtype):
    arrays, kw = make(case)
    fn = lambda x, w, b: F.conv2d(x, w, b, **kw)  # noqa: E731
    expected = forward_backward(fn, arrays, "cpu", dtype)
    assert_all_close(forward_backward(fn, arrays, kernel_device, dtype), expected, dtype)


@pytest.mark.gpu
def test_gradcheck_on_gpu(kernel_device):
    (x, w, b), kw = make((1, 4, 6, 5, 4, 3, 3, 2, 1, 2))
    inputs = [mdl.tensor(a, requires_grad=True, device=kernel_device) for a in (x, w, b)]
    assert mdl.gradcheck(lambda x, w, b: F.conv2d(x, w, b, **kw), inputs)


@pytest.mark.parametrize(
    "x_shape, w_shape, kw, message",
    [
        ((1, 4, 5, 5), (2, 3, 3, 3), dict(groups=1), "weight has 3 input channels per group"),
        ((1, 5, 5, 5), (2, 5, 3, 3), dict(groups=2), "not divisible by groups=2"),
        ((1, 4, 5, 5), (3, 2, 3, 3), dict(groups=2), "output channels 3 are not divisible"),
        ((1, 3, 4, 4), (2, 3, 7, 7), dict(padding=1), "larger than the padded input 6x6"),
        ((3, 4, 4), (2, 3, 3, 3), dict(), "x must be 4-D"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(stride=0), "stride must be >= 1"),
    ],
)
def test_errors_name_the_argument(x_shape, w_shape, kw, message):
    x, w = mdl.tensor(np.zeros(x_shape)), mdl.tensor(np.zeros(w_shape))
    with pytest.raises((ValueError, TypeError), match=message):
        F.conv2d(x, w, **kw)


def test_mixing_dtypes_is_an_error():
    x = mdl.tensor(np.zeros((1, 3, 5, 5), np.float32))
    w = mdl.tensor(np.zeros((2, 3, 3, 3), np.float64))
    with pytest.raises(TypeError, match="share one dtype"):
        F.conv2d(x, w)


def test_mixing_devices_is_an_error(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = mdl.tensor(np.zeros((1, 3, 5, 5)), device="cuda")
    w = mdl.tensor(np.zeros((2, 3, 3, 3)))
    with pytest.raises(RuntimeError, match="one device"):
        F.conv2d(x, w)
