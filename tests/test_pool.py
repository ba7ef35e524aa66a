import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    check_op,
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
    from minidl.ops.pool import max_pool2d_forward_numpy
    from minidl.ops.window import Window2d

    kernel, stride, (ph, pw) = (as_pair(kw[k]) for k in ("kernel_size", "stride", "padding"))
    pads = (ph, ph, pw, pw)
    window = Window2d.over(*x.shape[2:], kernel, stride, pads, (1, 1), kw["ceil_mode"])
    _, arg = max_pool2d_forward_numpy(x, window)
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
        (dict(kernel_size=2, dilation=0), "dilation must be >= 1"),
        (dict(kernel_size=3, dilation=3), r"kernel 3x3 \(dilated to 7x7\) is larger"),
        (dict(kernel_size=2, padding=2, dilation=3), "padding 2 along h must be at most half"),
    ],
)
def test_errors(kw, message):
    with pytest.raises(ValueError, match=message):
        F.max_pool2d(mdl.tensor(np.zeros((1, 1, 5, 5))), **kw)


# ---- PyTorch's options: dilation, unbatched input, return_indices, integer tensors ---------------
# Named records: the input shape and the keyword arguments, passed the same to both libraries.
OPTION_CASES = [
    pytest.param(dict(x=(2, 2, 9, 10), kernel_size=3, dilation=2), id="dilation2"),
    pytest.param(
        dict(x=(1, 3, 11, 9), kernel_size=(3, 2), stride=(2, 1), padding=1, dilation=(2, 3)),
        id="dilation-pairs-padding",
    ),
    pytest.param(
        dict(x=(2, 2, 10, 11), kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
        id="dilation-ceil-mode",
    ),
    pytest.param(dict(x=(3, 8, 7), kernel_size=3, stride=2, padding=1), id="unbatched"),
    pytest.param(dict(x=(2, 9, 9), kernel_size=2, dilation=3, ceil_mode=True), id="unbatched-dil"),
]


def options(case):
    return {k: v for k, v in case.items() if k != "x"}


def reference_options(x, kwargs):
    """tests/reference.py's loop, with PyTorch's defaults filled in; unbatched as a batch of one."""
    as_pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    kernel = as_pair(kwargs["kernel_size"])
    stride = as_pair(kwargs.get("stride", kernel))
    padding, dilation = as_pair(kwargs.get("padding", 0)), as_pair(kwargs.get("dilation", 1))
    batched = x[None] if x.ndim == 3 else x
    y, arg = reference.max_pool2d(
        batched, kernel, stride, padding, kwargs.get("ceil_mode", False), dilation
    )
    return (y[0], arg[0]) if x.ndim == 3 else (y, arg)


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_naive_reference(case):
    x = distinct(case["x"])
    y, indices = F.max_pool2d(mdl.tensor(x), return_indices=True, **options(case))
    y_ref, arg_ref = reference_options(x, options(case))
    assert y.shape == y_ref.shape and indices.dtype == np.int64
    assert_close(y.numpy(), y_ref)
    assert np.array_equal(indices.numpy(), arg_ref)


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_torch_and_gradcheck(case):
    torch = pytest.importorskip("torch")
    kw, x = options(case), distinct(case["x"])
    check_op(
        [x], lambda x: torch.nn.functional.max_pool2d(x, **kw), lambda x: F.max_pool2d(x, **kw)
    )
    _, indices = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    _, ours = F.max_pool2d(mdl.tensor(x), return_indices=True, **kw)
    assert np.array_equal(ours.numpy(), indices.numpy())


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_kernel_matches_numpy(case, kernel_device, dtype):
    kw, x = options(case), distinct(case["x"])
    fn = lambda x: F.max_pool2d(x, **kw)  # noqa: E731
    expected = forward_backward(fn, [x], "cpu", dtype)
    assert_all_close(forward_backward(fn, [x], kernel_device, dtype), expected, dtype)
    indices = F.max_pool2d(mdl.tensor(x, device=kernel_device), return_indices=True, **kw)[1]
    assert np.array_equal(indices.numpy(), reference_options(x, kw)[1])


INTEGER_DTYPES = [np.int8, np.uint8, np.int16, np.int32, np.int64]


@pytest.mark.parametrize("device", ["cpu", "emulated"])
@pytest.mark.parametrize("int_dtype", INTEGER_DTYPES, ids=lambda d: np.dtype(d).name)
def test_integer_tensor_with_padding(int_dtype, device, monkeypatch):
    """PyTorch pools integer tensors on the CPU; padding holds the dtype's smallest value and
    never wins, even against a real cell holding that value (the top rows here)."""
    torch = pytest.importorskip("torch")
    low, high = np.iinfo(int_dtype).min, np.iinfo(int_dtype).max
    if device == "emulated" and int_dtype == np.int64:
        low, high = -(2**53), 2**53  # pooled as double there (see the next test)
    x = np.random.default_rng(0).integers(low, high, (2, 3, 7, 8), dtype=int_dtype)
    x[:, :, :2] = low
    if device == "emulated":
        monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    kw = dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)
    y, indices = F.max_pool2d(
        mdl.tensor(x, device="cuda" if device == "emulated" else "cpu"), return_indices=True, **kw
    )
    y_t, indices_t = torch.nn.functional.max_pool2d(torch.tensor(x), return_indices=True, **kw)
    assert y.dtype == int_dtype
    assert np.array_equal(y.numpy(), y_t.numpy())
    assert np.array_equal(indices.numpy(), indices_t.numpy())
    y_ref, arg_ref = reference_options(x, kw)
    assert np.array_equal(y.numpy(), y_ref) and np.array_equal(indices.numpy(), arg_ref)


def test_kernel_refuses_int64_beyond_double_precision(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = mdl.tensor(np.full((1, 1, 4, 4), 2**60, dtype=np.int64), device="cuda")
    with pytest.raises(TypeError, match=r"max_pool2d: on the GPU an int64 tensor .* 2\*\*53"):
        F.max_pool2d(x, 2)


def test_nn_max_pool2d_options_match_torch():
    torch = pytest.importorskip("torch")
    kw = dict(kernel_size=3, stride=2, padding=1, dilation=2, return_indices=True, ceil_mode=True)
    x = distinct((3, 11, 10))  # unbatched
    y, indices = mdl.nn.MaxPool2d(**kw)(mdl.tensor(x))
    y_t, indices_t = torch.nn.MaxPool2d(**kw)(torch.tensor(x))
    assert_close(y.numpy(), y_t.numpy())
    assert np.array_equal(indices.numpy(), indices_t.numpy())
    assert "dilation=2" in repr(mdl.nn.MaxPool2d(**kw))
