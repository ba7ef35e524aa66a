import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    distinct,
    forward_backward,
    torch_forward_backward,
)

# (N, C, H, W, kernel, stride, padding, ceil_mode)
CASES = [
    pytest.param((2, 3, 13, 13, 3, 2, 0, False), id="alexnet-3s2-overlapping"),
    pytest.param((1, 2, 8, 8, 2, 2, 0, False), id="batch1-2s2"),
    pytest.param((2, 3, 9, 7, 3, 2, 1, False), id="nonsquare-pad1"),
    pytest.param((2, 2, 10, 10, 3, 2, 0, True), id="ceil-mode"),
    pytest.param((1, 3, 11, 8, 3, 3, 1, True), id="ceil-mode-pad1-s3"),
    pytest.param((2, 2, 7, 9, (3, 2), (2, 1), (1, 0), False), id="pairs"),
    pytest.param((1, 2, 6, 6, 5, 1, 2, False), id="k5-s1-p2"),
]


def kwargs(case):
    *_, k, s, p, ceil = case
    return dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil)


def make(case, seed=0):
    return distinct(case[:4], seed)


def as_pair(v):
    return (v, v) if isinstance(v, int) else v


@pytest.mark.parametrize("case", CASES)
def test_forward_and_argmax_match_naive_reference(case):
    x = make(case)
    kw = kwargs(case)
    y_ref, arg_ref = reference.max_pool2d(
        x,
        as_pair(kw["kernel_size"]),
        as_pair(kw["stride"]),
        as_pair(kw["padding"]),
        kw["ceil_mode"],
    )
    y = F.max_pool2d(mdl.tensor(x), **kw)
    assert_close(y.numpy(), y_ref)
    from minidl.ops.pool import max_pool2d_forward_numpy, pool_output_size

    (kh, kw_), (sh, sw), (ph, pw) = (as_pair(kw[k]) for k in ("kernel_size", "stride", "padding"))
    oh = pool_output_size(x.shape[2], kh, sh, ph, kw["ceil_mode"])
    ow = pool_output_size(x.shape[3], kw_, sw, pw, kw["ceil_mode"])
    _, arg = max_pool2d_forward_numpy(x, kh, kw_, sh, sw, ph, pw, oh, ow)
    assert np.array_equal(arg, arg_ref)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case):
    x = mdl.tensor(make(case), requires_grad=True)
    assert mdl.gradcheck(lambda x: F.max_pool2d(x, **kwargs(case)), [x])


@pytest.mark.parametrize("case", CASES)
def test_matches_torch(case):
    torch = pytest.importorskip("torch")
    kw = kwargs(case)
    ours = forward_backward(lambda x: F.max_pool2d(x, **kw), [make(case)])
    theirs = torch_forward_backward(
        torch, lambda x: torch.nn.functional.max_pool2d(x, **kw), [make(case)]
    )
    assert_all_close(ours, theirs)


def test_ties_go_to_the_first_maximum_in_row_major_order():
    x = mdl.tensor(np.ones((1, 1, 3, 3)), requires_grad=True)
    F.max_pool2d(x, 3, 1).backward(np.ones((1, 1, 1, 1)))
    expected = np.zeros((1, 1, 3, 3))
    expected[0, 0, 0, 0] = 1
    assert np.array_equal(x.grad.numpy(), expected)


def test_overlapping_windows_add_their_gradients():
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 1.0  # the centre lies in all four 3x3/2 windows and wins each
    t = mdl.tensor(x, requires_grad=True)
    F.max_pool2d(t, 3, 2).backward(np.ones((1, 1, 2, 2)))
    assert t.grad.numpy()[0, 0, 2, 2] == 4.0


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_numpy(case, kernel_device, dtype):
    kw = kwargs(case)
    fn = lambda x: F.max_pool2d(x, **kw)  # noqa: E731
    expected = forward_backward(fn, [make(case)], "cpu", dtype)
    assert_all_close(forward_backward(fn, [make(case)], kernel_device, dtype), expected, dtype)


def test_kernel_ties_and_determinism(kernel_device):
    x = np.round(np.random.default_rng(0).standard_normal((2, 3, 9, 9)))  # many ties
    runs = [forward_backward(lambda x: F.max_pool2d(x, 3, 2), [x], kernel_device) for _ in range(2)]
    cpu = forward_backward(lambda x: F.max_pool2d(x, 3, 2), [x], "cpu")
    assert np.array_equal(runs[0][1][0], runs[1][1][0])  # equal bits, run to run
    assert np.array_equal(runs[0][1][0], cpu[1][0])  # same tie rule as the NumPy path


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(kernel_size=3, padding=2), "padding 2 along h must be at most half"),
        (dict(kernel_size=9), "larger than the padded input"),
        (dict(kernel_size=0), "kernel_size must be >= 1"),
    ],
)
def test_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        F.max_pool2d(mdl.tensor(np.zeros((1, 1, 5, 5))), **kw)
