import tracemalloc

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl.ops import conv
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    check_op,
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


# N*OH*OW = 4495 is long enough for the GPU to split the weight gradient's inner dimension
# (gemm.matmul_nt_split_k): two slices, the last one longer, in each of two groups.
SPLIT_K_CASE = pytest.param((5, 2, 31, 29, 4, 3, 3, 1, 1, 2), id="split-k-g2")


@pytest.mark.parametrize("case", CASES + [SPLIT_K_CASE])
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
        ((4, 4), (2, 3, 3, 3), dict(), r"x must be 4-D \(N, C, H, W\) \(or unbatched"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(padding="same", stride=2), "'same' needs stride 1"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(padding="full"), "'valid' or 'same', got 'full'"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(dilation=0), "dilation must be >= 1"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(dilation=3), r"kernel 3x3 \(dilated to 7x7\) is larger"),
        ((1, 3, 5, 5), (2, 3, 3, 3), dict(padding=(1, 1, 0, 0)), "int or a pair of ints"),
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


def test_split_k_bounds_cover_the_inner_dimension_in_order():
    from minidl.gemm import MIN_SLICE, split_k_bounds

    cases = [(100, 1), (2 * MIN_SLICE, 1), (4495, 1), (387200, 3), (21632, 54), (9, 999)]
    for inner, tiles in cases:
        bounds = split_k_bounds(inner, tiles, multiprocessors=132)
        assert bounds[0][0] == 0 and bounds[-1][1] == inner
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(hi - lo >= min(inner, MIN_SLICE) for lo, hi in bounds)
    assert len(split_k_bounds(387200, 3, 132)) == 88  # AlexNet conv1 at batch 128: 3 tiles
    assert len(split_k_bounds(21632, 10_000, 132)) == 1  # enough tiles: no split


@pytest.mark.parametrize("shape", [(1, 3, 5000), (2, 7, 9001), (3, 130, 100)])
def test_matmul_nt_split_k(shape, kernel_device, dtype):
    from minidl import backend, gemm

    g, p, m = shape
    a, b_t = random((g, p, m), 0).astype(dtype), random((g, m, 5), 1).astype(dtype)
    b = b_t.transpose(0, 2, 1)
    xp = backend.xp("cuda")
    b_view = xp.asarray(b_t).transpose(0, 2, 1)  # not contiguous
    out = backend.to_numpy(gemm.matmul_nt_split_k(xp.asarray(a), b_view))
    assert out.shape == (g, p, 5)
    assert_close(out, np.matmul(a, b.transpose(0, 2, 1)), dtype)


# ---- PyTorch's options: dilation, padding "same"/"valid", unbatched input ------------------------
# Named records: x, weight shapes and the keyword arguments, passed the same to both libraries.
OPTION_CASES = [
    pytest.param(dict(x=(2, 3, 9, 8), w=(4, 3, 3, 3), dilation=2), id="dilation2"),
    pytest.param(
        dict(
            x=(1, 4, 11, 10),
            w=(4, 2, 3, 2),
            stride=(2, 1),
            padding=(2, 1),
            dilation=(2, 3),
            groups=2,
        ),
        id="dilation-pairs-stride-padding-g2",
    ),
    pytest.param(dict(x=(2, 2, 7, 8), w=(3, 2, 3, 3), padding="same"), id="same-k3"),
    pytest.param(dict(x=(1, 2, 7, 6), w=(3, 2, 4, 2), padding="same"), id="same-even-k"),
    pytest.param(
        dict(x=(1, 2, 8, 9), w=(2, 2, 2, 3), padding="same", dilation=(3, 2)),
        id="same-even-k-odd-dilation",
    ),
    pytest.param(
        dict(x=(1, 4, 7, 7), w=(4, 2, 3, 3), padding="same", dilation=2, groups=2), id="same-g2"
    ),
    pytest.param(dict(x=(2, 3, 6, 7), w=(2, 3, 3, 2), padding="valid"), id="valid"),
    pytest.param(dict(x=(3, 7, 6), w=(4, 3, 3, 3), padding=1), id="unbatched"),
    pytest.param(
        dict(x=(2, 6, 5), w=(2, 1, 2, 2), dilation=2, groups=2), id="unbatched-dilation-g2"
    ),
]


def make_options(case, seed=0):
    kwargs = {k: v for k, v in case.items() if k not in ("x", "w")}
    arrays = (random(case["x"], seed), random(case["w"], seed + 1), random(case["w"][:1], seed + 2))
    return arrays, kwargs


def reference_options(x, w, b, kwargs):
    """tests/reference.py's loop; "same" padding as PyTorch splits it (the odd one after)."""
    as_pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    stride, dilation = as_pair(kwargs.get("stride", 1)), as_pair(kwargs.get("dilation", 1))
    padding = kwargs.get("padding", 0)
    if padding == "same":
        (kh, kw), (dh, dw) = w.shape[2:], dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        padding = (th // 2, th - th // 2, tw // 2, tw - tw // 2)
    padding = (0, 0) if padding == "valid" else as_pair(padding)
    batched = x[None] if x.ndim == 3 else x
    y = reference.conv2d(batched, w, b, stride, padding, kwargs.get("groups", 1), dilation)
    return y[0] if x.ndim == 3 else y


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_naive_reference(case):
    (x, w, b), kwargs = make_options(case)
    y = F.conv2d(mdl.tensor(x), mdl.tensor(w), mdl.tensor(b), **kwargs).numpy()
    expected = reference_options(x, w, b, kwargs)
    assert y.shape == expected.shape
    assert_close(y, expected)


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_torch_and_gradcheck(case):
    torch = pytest.importorskip("torch")
    arrays, kwargs = make_options(case)
    check_op(
        list(arrays),
        lambda x, w, b: torch.nn.functional.conv2d(x, w, b, **kwargs),
        lambda x, w, b: F.conv2d(x, w, b, **kwargs),
    )


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_kernel_matches_numpy(case, kernel_device, dtype):
    arrays, kwargs = make_options(case)
    fn = lambda x, w, b: F.conv2d(x, w, b, **kwargs)  # noqa: E731
    expected = forward_backward(fn, arrays, "cpu", dtype)
    assert_all_close(forward_backward(fn, arrays, kernel_device, dtype), expected, dtype)


def test_nn_conv2d_options_match_torch():
    torch = pytest.importorskip("torch")
    kwargs = dict(stride=1, padding="same", dilation=(2, 1), groups=2, bias=True)
    ours = mdl.nn.Conv2d(4, 6, (2, 3), dtype=np.float64, **kwargs)
    theirs = torch.nn.Conv2d(4, 6, (2, 3), dtype=torch.float64, **kwargs)
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight.numpy()))
        theirs.bias.copy_(torch.tensor(ours.bias.numpy()))
    x = random((4, 7, 8))  # unbatched
    assert_close(ours(mdl.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy())
    assert "dilation=(2, 1)" in repr(ours)


def test_nn_conv2d_refuses_other_padding_modes():
    with pytest.raises(ValueError, match="padding_mode='reflect' is not supported"):
        mdl.nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")


def _peak_above_start(fn) -> int:
    """Bytes of NumPy arrays fn allocates at its peak beyond those live when it starts (NumPy
    reports its buffers to tracemalloc; under the emulator the GPU branch's arrays are NumPy's)."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_gpu_branch_frees_the_columns_early(monkeypatch):
    """The GPU branch's im2col columns are the largest arrays a convolution makes (896 MB for
    AlexNet's conv2 at batch 128). Forward lets them go before y's NCHW copy; backward rebuilds
    them for dw and lets them go before dx's GEMM makes dcols, as large (issue #11)."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    rng = np.random.default_rng(0)
    # forward: columns (C*3*3 = 36 rows) as large as y (O = 36 rows): at most two held at once
    x = mdl.tensor(rng.standard_normal((4, 4, 32, 32)), device="cuda")
    w = mdl.tensor(rng.standard_normal((36, 4, 3, 3)), device="cuda")
    unit = 36 * 4 * 32 * 32 * 8  # bytes of the columns, of y's GEMM output and of y
    assert _peak_above_start(lambda: F.conv2d(x, w, padding=1)) < 2.5 * unit
    # backward: columns (C*5*5 = 200 rows) far larger than dy, dx and dw: only one such at once
    x = mdl.tensor(rng.standard_normal((4, 8, 32, 32)), requires_grad=True, device="cuda")
    w = mdl.tensor(rng.standard_normal((4, 8, 5, 5)), requires_grad=True, device="cuda")
    y = F.conv2d(x, w, padding=2)
    dy = rng.standard_normal(y.shape)
    columns = 200 * 4 * 32 * 32 * 8
    assert _peak_above_start(lambda: y.backward(dy)) < 1.5 * columns


# IM2COL_WORKSPACE lowers the batch in blocks of images; five images give blocks of one, and of
# two with a shorter last block.
BLOCK_CASES = [
    pytest.param((5, 4, 9, 11, 6, 3, 3, 2, 1, 2), id="s2-p1-g2"),
    pytest.param((5, 6, 8, 7, 6, 5, 5, 1, 2, 3), id="k5-p2-g3"),
    SPLIT_K_CASE,
]


def test_image_blocks_cover_the_batch_in_order(monkeypatch):
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", None)
    assert conv.image_blocks(7, 100) == [(0, 7)]
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", 250)
    assert conv.image_blocks(7, 100) == [(0, 2), (2, 4), (4, 6), (6, 7)]
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", 50)  # less than one image: one image a block
    assert conv.image_blocks(3, 100) == [(0, 1), (1, 2), (2, 3)]


@pytest.mark.parametrize("images_per_block", [1, 2])
@pytest.mark.parametrize("case", BLOCK_CASES)
@pytest.mark.parametrize("device", ["cpu", "emulated"])
def test_im2col_workspace_matches_the_whole_batch(case, images_per_block, device, monkeypatch):
    """Blocks of images give the forward and every gradient of one whole-batch lowering (dw and
    db summed over blocks, so equal to rounding), with no block's columns past the workspace."""
    if device == "emulated":
        monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
        device = "cuda"
    arrays, kw = make(case)
    fn = lambda x, w, b: F.conv2d(x, w, b, **kw)  # noqa: E731
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", None)
    whole = forward_backward(fn, arrays, device)
    n, c, _, _, _, kh, kw_, *_ = case
    oh, ow = whole[0].shape[2:]
    workspace = images_per_block * c * kh * kw_ * oh * ow * 8  # float64 columns
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", workspace)
    widths = []
    for name in ("im2col_numpy", "im2col_cuda"):
        build = getattr(conv, name)

        def spy(x, *geometry, build=build):
            cols = build(x, *geometry)
            widths.append(cols.shape[1])
            return cols

        monkeypatch.setattr(conv, name, spy)
    blocked = forward_backward(fn, arrays, device)
    (y, grads), (y_whole, grads_whole) = blocked, whole
    for got, want in zip([y, *grads], [y_whole, *grads_whole]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # forward and dw's rebuild each lower the batch block by block
    blocks = -(-n // images_per_block)
    assert len(widths) == 2 * blocks
    assert max(widths) * c * kh * kw_ * 8 <= workspace
