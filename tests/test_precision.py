"""Mixed precision: the emulator's 16-bit rounding, every 16-bit kernel against the NumPy path
computed in float32 from the same 16-bit inputs, float32 master weights, and GradScaler's
skip-and-halve / grow semantics (docs/precision.md)."""

import shutil
from functools import partial

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import backend, cuda, dtypes, emulator, kernel_source, optim, precision
from minidl.ops import activation, batchnorm, conv, dropout, loss, lrn, pool, reduce
from minidl.ops.window import Window2d

BF16 = dtypes.bfloat16  # None without ml_dtypes


def to_float32(x):
    return x.astype(np.float32)


def to_storage(x, dtype):
    return x.astype(dtype)


# bfloat16 needs ml_dtypes, which a checkout run without installing (the GPU machine) may lack
HALF_TYPES = [np.dtype(np.float16)] + ([BF16] if BF16 is not None else [])
HALF_IDS = ["float16", "bfloat16"][: len(HALF_TYPES)]
CONVERTED = [
    "activation.cu",
    "batchnorm.cu",
    "conv.cu",
    "dropout.cu",
    "loss.cu",
    "lrn.cu",
    "pool.cu",
    "reduce.cu",
    "sgd.cu",
]


@pytest.fixture
def emulate(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")


def ulp(reference32, dtype):
    """The spacing of ``dtype`` at each value of a float32 array (at its 16-bit rounding)."""
    r = np.abs(reference32.astype(np.float32))
    if np.dtype(dtype) == np.float16:
        return np.spacing(r.astype(np.float16)).astype(np.float32)
    bits = r.astype(BF16).view(np.uint16)
    return (bits + np.uint16(1)).view(BF16).astype(np.float32) - bits.view(BF16).astype(np.float32)


def assert_within_ulps(got16, reference32, dtype, ulps=1, what=""):
    got = to_float32(got16)
    error = np.abs(got - reference32) / ulp(reference32, dtype)
    worst = float(error.max()) if error.size else 0.0
    assert worst <= ulps, f"{what}: {worst:.2f} ulp of {np.dtype(dtype)} from the float32 reference"


def round16(x32, dtype):
    """A float32 array rounded to 16 bits and back (what a 16-bit kernel stores)."""
    return to_float32(to_storage(np.asarray(x32, dtype=np.float32), dtype))


# ---- rounding: the emulator's __half and __nv_bfloat16 against NumPy and a reference -----------
CONVERT_CU = """// minidl-types: __half __nv_bfloat16
#include "common.cuh"

template <typename T>
__global__ void narrow(const float* x, T* y, long long total) {
    FOR_EACH_INDEX(i, total) { y[i] = from_acc<T>(x[i]); }
}

template <typename T>
__global__ void widen(const T* y, float* x, long long total) {
    FOR_EACH_INDEX(i, total) { x[i] = to_acc(y[i]); }
}

template <typename T>
__global__ void fill(T* y, T value, long long total) {
    FOR_EACH_INDEX(i, total) { y[i] = value; }
}
"""


def _convert_module(folder):
    shutil.copy(cuda.kernel_dir() / "common.cuh", folder / "common.cuh")
    (folder / "convert.cu").write_text(CONVERT_CU)
    return emulator.load(folder / "convert.cu")


def _narrow(module, x32, ctype):
    out = np.empty(x32.shape, dtype=np.float16 if ctype == "__half" else BF16)
    module.launch(f"narrow<{ctype}>", (4,), (256,), (x32, out, np.int64(x32.size)))
    return out.view(np.uint16)


def _widen(module, bits, ctype):
    out = np.empty(bits.shape, dtype=np.float32)
    module.launch(f"widen<{ctype}>", (4,), (256,), (bits, out, np.int64(bits.size)))
    return out


def rounding_inputs():
    """Random float32 bit patterns (every exponent, subnormals included), values at and next to
    the halfway points of both 16-bit formats, their limits, zeros, infinities and NaNs."""
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    # Exact halfway points between neighbouring 16-bit values, and one float32 ulp either side.
    half = np.arange(0, 0x7C00, 7, dtype=np.uint16).view(np.float16).astype(np.float32)
    half_mid = half.astype(np.float64) + np.spacing(half.astype(np.float16)).astype(np.float64) / 2
    bf_bits = (np.arange(0, 0x7F80, 5, dtype=np.uint32) << 16) | 0x8000  # low 16 bits exactly half
    special = np.array(
        [0.0, -0.0, 65504.0, 65519.99, 65520.0, 65536.0, 2.0**-24, 2.0**-25, 2.0**-25 * 1.0001,
         2.0**-14, 2.0**-14 * (1 - 2.0**-11), 3.4e38, 1e-45, np.inf, -np.inf, np.nan, -np.nan],
        dtype=np.float32,
    )  # fmt: skip
    values = [
        random_bits.view(np.float32),
        half_mid.astype(np.float32),
        np.nextafter(half_mid.astype(np.float32), np.float32(np.inf)),
        np.nextafter(half_mid.astype(np.float32), np.float32(0)),
        bf_bits.view(np.float32),
        (bf_bits + 1).view(np.float32),
        (bf_bits - 1).view(np.float32),
        special,
    ]
    x = np.concatenate(values)
    return np.concatenate([x, -x])


def reference_bfloat16(x32):
    """bfloat16 by the definition: the two neighbours that keep the top 16 bits, the nearer one,
    ties to the even one (lowest kept bit 0); computed in float64, independent of NumPy's."""
    bits = x32.view(np.uint32)
    down = (bits >> 16).astype(np.uint32)
    up = down + 1
    with np.errstate(invalid="ignore"):
        lo = (down << 16).view(np.float32).astype(np.float64)
        hi = (up << 16).astype(np.uint32).view(np.float32).astype(np.float64)
        # Past the largest finite value the next one is inf; rounding measures the distance to
        # where it would be with one more exponent, 2^128 (IEEE's overflow rule).
        hi = np.where((up & 0x7FFF) == 0x7F80, np.copysign(2.0**128, lo), hi)
        x = x32.astype(np.float64)
        d_lo, d_hi = np.abs(x - lo), np.abs(hi - x)
        pick_up = (d_hi < d_lo) | ((d_hi == d_lo) & (down % 2 == 1))
    return np.where(pick_up, up, down).astype(np.uint16)


def test_emulated_float_to_half_rounds_like_numpy(tmp_path):
    module = _convert_module(tmp_path)
    x = rounding_inputs()
    got = _narrow(module, x, "__half")
    with np.errstate(over="ignore"):
        expected = x.astype(np.float16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], expected[~nan])
    assert np.all(got[nan] == 0x7FFF)  # CUDA's canonical NaN
    # half -> float is exact: all 65536 bit patterns.
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    widened = _widen(module, every.view(np.float16), "__half")
    expected_wide = every.view(np.float16).astype(np.float32)
    finite = ~np.isnan(expected_wide)
    assert np.array_equal(widened[finite].view(np.uint32), expected_wide[finite].view(np.uint32))
    assert np.isnan(widened[~finite]).all()


def test_emulated_float_to_bfloat16_rounds_to_nearest_even(tmp_path):
    module = _convert_module(tmp_path)
    x = rounding_inputs()
    got = _narrow(module, x, "__nv_bfloat16")
    nan = np.isnan(x)
    assert np.array_equal(got[~nan], reference_bfloat16(x)[~nan])
    assert np.all(got[nan] == 0x7FFF)
    # NumPy's conversion to ml_dtypes.bfloat16 (what Tensor.astype does) agrees bit for bit, but
    # for a NaN's bits (it keeps the sign and sets the quiet bit; CUDA writes 0x7fff)
    numpy_bits = x.astype(BF16).view(np.uint16)
    assert np.array_equal(numpy_bits[~nan], got[~nan])
    assert np.isnan(numpy_bits.view(BF16)[nan].astype(np.float32)).all()
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    widened = _widen(module, every.view(BF16), "__nv_bfloat16")
    assert np.array_equal(widened.view(np.uint32), every.astype(np.uint32) << 16)


def test_emulator_passes_16bit_scalars(tmp_path):
    """A __half scalar argument from np.float16, a __nv_bfloat16 one from a bfloat16 scalar."""
    module = _convert_module(tmp_path)
    y = np.zeros(5, dtype=np.float16)
    module.launch("fill<__half>", (1,), (8,), (y, np.float16(-2.5e-6), np.int64(5)))
    assert np.all(y == np.float16(-2.5e-6))
    z = np.zeros(5, dtype=BF16)
    module.launch("fill<__nv_bfloat16>", (1,), (8,), (z, BF16.type(3.140625), np.int64(5)))
    assert np.all(z.astype(np.float32) == np.float32(3.140625))


def test_bfloat16_matches_torch():
    torch = pytest.importorskip("torch")
    x = rounding_inputs()
    x = x[~np.isnan(x)]
    expected = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(x.astype(BF16).view(np.uint16), expected)


def test_a_rounding_mutation_in_the_shim_is_caught(tmp_path, monkeypatch):
    """Round half up instead of half to even: the rounding tests must see it (and the shim copy
    must pass untouched first)."""
    shim = (emulator.SHIM).read_text()
    for old, new, ctype in [
        ("rebiased += 0xfffu + ((rebiased >> 13) & 1u);", "rebiased += 0x1000u;", "__half"),
        ("x += 0x7fffu + ((x >> 16) & 1u);", "x += 0x8000u;", "__nv_bfloat16"),
    ]:
        assert shim.count(old) == 1
        x = rounding_inputs()
        x = x[~np.isnan(x)]
        with np.errstate(over="ignore"):
            expected = (
                x.astype(np.float16).view(np.uint16) if ctype == "__half" else reference_bfloat16(x)
            )
        for text, good in ((shim, True), (shim.replace(old, new), False)):
            folder = tmp_path / f"{ctype}-{good}"
            folder.mkdir()
            (folder / "emu_shim.h").write_text(text)
            monkeypatch.setattr(emulator, "SHIM", folder / "emu_shim.h")
            got = _narrow(_convert_module(folder), x, ctype)
            assert np.array_equal(got, expected) == good, f"{ctype} shim mutation not caught"


# ---- which kernels are 16-bit, and that NVRTC compiles those instantiations --------------------
def test_converted_files_declare_16bit_instantiations():
    """tests/test_kernels.py compiles every name expression with NVRTC for each architecture;
    these files' expressions must include the 16-bit ones."""
    for name in CONVERTED:
        expressions = kernel_source.name_expressions((cuda.kernel_dir() / name).read_text())
        for ctype in ("float", "double", "__half", "__nv_bfloat16"):
            assert any(e.endswith(f"<{ctype}>") for e in expressions), (name, ctype)
    assert kernel_source.kernel_types("template <typename T> __global__ void f(T* x) {}") == (
        "float",
        "double",
    )
    with pytest.raises(ValueError, match="unknown"):
        kernel_source.kernel_types("// minidl-types: float half\n")


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
def test_nvrtc_compiles_16bit_kernels(arch):
    from tests.test_kernels import nvrtc_compile

    for name in CONVERTED:
        source = (cuda.kernel_dir() / name).read_text()
        nvrtc_compile(name, arch, [e for e in kernel_source.name_expressions(source) if "<__" in e])


# ---- every 16-bit kernel against the NumPy path --------------------------------------------------
def inputs16(shape, dtype, seed=0, offset=0.0):
    """16-bit inputs and the same values in float32 (the NumPy reference starts from these)."""
    x16 = to_storage(np.random.default_rng(seed).standard_normal(shape) + offset, dtype)
    return x16, to_float32(x16)


def run(fn, *args):
    """fn on device "cuda" (NumPy under the emulator, CuPy on a GPU); arrays back as NumPy."""
    out = fn(*(backend.move(a, "cuda") if isinstance(a, np.ndarray) else a for a in args))
    if isinstance(out, tuple):
        return tuple(backend.to_numpy(o) for o in out)
    return backend.to_numpy(out)


def check_lrn(dtype):
    a16, a = inputs16((2, 7, 3, 5), dtype)
    b16, s = run(lrn.local_response_norm_forward_cuda, a16, 5, 1.0, 0.75, 2.0)
    b_ref, s_ref, _ = lrn.local_response_norm_forward_numpy(a, 5, 1.0, 0.75, 2.0)
    assert s.dtype == np.float32, "LRN's scale is kept in float32 for 16-bit storage"
    np.testing.assert_allclose(s, s_ref, rtol=2e-6)
    assert_within_ulps(b16, b_ref, dtype, 1, "lrn forward")
    db16, db = inputs16(a.shape, dtype, seed=1)
    b = to_float32(b16)  # backward starts from the stored 16-bit b, as the kernel does
    da16 = run(lrn.local_response_norm_backward_cuda, db16, a16, b16, s, 5, 1.0, 0.75)
    da_ref = lrn.local_response_norm_backward_numpy(db, a, b, s_ref, s_ref**-0.75, 5, 1.0, 0.75)
    assert_within_ulps(da16, da_ref, dtype, 2, "lrn backward")
    return True


def check_dropout(dtype):
    x16, x = inputs16((5, 301), dtype)
    key, p = 0x1234_5678_9ABC_DEF0, 0.3
    y16 = run(dropout.dropout_apply_cuda, x16, key, p)
    mask = dropout.dropout_mask_numpy(key, x.shape, p)
    scale = np.float32(1 / (1 - p))
    assert np.array_equal(to_float32(y16), round16(np.where(mask, x * scale, 0), dtype))
    # backward: the same mask-apply on dy, another array: the same elements kept, dy scaled
    dy16, dy = inputs16(x.shape, dtype, seed=1)
    dx16 = run(dropout.dropout_apply_cuda, dy16, key, p)
    assert np.array_equal(to_float32(dx16), round16(np.where(mask, dy * scale, 0), dtype))
    return True


def check_activation(dtype):
    x16, x = inputs16((3, 5, 4, 7), dtype)
    b16, b = inputs16((5,), dtype, seed=2)
    y16 = run(activation.relu_forward_cuda, x16)
    assert np.array_equal(to_float32(y16), np.maximum(x, 0))
    dy16, dy = inputs16(x.shape, dtype, seed=3)
    dx16 = run(activation.relu_backward_cuda, dy16, y16)
    assert np.array_equal(to_float32(dx16), dy * (x > 0))
    z16 = run(activation.bias_relu_forward_cuda, x16, b16)
    expected = round16(activation.bias_relu_forward_numpy(x, b), dtype)  # x + b in float32
    assert np.array_equal(to_float32(z16), expected)
    return True


def check_reduce(dtype):
    # Large values that cancel: a 16-bit running sum or 16-bit partials would be far off.
    x16, x = inputs16((3, 4, 17, 29), dtype)
    x16 = to_storage(
        x * 300 + np.float32(1000.0) * np.sign(np.arange(x.size) % 2 - 0.5).reshape(x.shape), dtype
    )
    x = to_float32(x16)
    out16 = run(reduce.channel_sum_cuda, x16)
    reference = x.astype(np.float64).sum(axis=(0, 2, 3)).astype(np.float32)
    assert_within_ulps(out16, reference, dtype, 1, "channel_sum")
    return True


def check_sgd(dtype):
    """The kernel's float32 master update equals SGD._step_numpy on float32, for both rules, with
    a gradient scale; the parameter is the master rounded to 16 bits."""
    for rule in (0, 1):
        w16, w = inputs16((700,), dtype)
        w16, master = backend.move(w16, "cuda"), backend.move(w.copy(), "cuda")  # in place
        v = backend.move(np.zeros_like(w), "cuda")
        master_ref, v_ref = w.copy(), np.zeros_like(w)
        sgd = optim.SGD([mdl.nn.Parameter(np.zeros(1))], lr=0.1, momentum=0.9, weight_decay=0.01)
        sgd.rule = "paper" if rule else "pytorch"
        for step in range(3):
            g16, g = inputs16(w.shape, dtype, seed=10 + step)
            g16 = backend.move(g16, "cuda")
            cuda.launch(
                "sgd",
                "sgd_step",
                dtype,
                cuda.grid_for(w.size),
                (cuda.THREADS,),
                (w16, g16, master, v, cuda.i64(w.size), *cuda.real(dtype, 0.1, 0.9, 0.01, 0.5),
                 cuda.i32(rule)),
            )  # fmt: skip
            sgd._step_numpy(master_ref, g * np.float32(0.5), v_ref)
        master, v, w16 = (backend.to_numpy(a) for a in (master, v, w16))
        np.testing.assert_allclose(master, master_ref, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(v, v_ref, rtol=1e-6, atol=1e-7)
        assert np.array_equal(to_float32(w16), round16(master, dtype))
    return True


def check_batchnorm(dtype):
    """Statistics, running update, forward and backward of a 16-bit x against float64 NumPy on
    the same 16-bit values; the statistics and running buffers are float32 arrays."""
    x16, x = inputs16((3, 4, 37), dtype, offset=3.0)
    w16, w = inputs16((4,), dtype, seed=1)
    b16, b = inputs16((4,), dtype, seed=2)
    dy16, dy = inputs16(x.shape, dtype, seed=3)
    stats = run(batchnorm.batch_norm_stats_cuda, x16)
    assert all(s.dtype == np.float32 for s in stats)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(axis=(0, 2)), x64.var(axis=(0, 2))
    np.testing.assert_allclose(stats[0] + stats[1], mean, rtol=1e-6)
    np.testing.assert_allclose(stats[2], var, rtol=1e-5)
    running = [backend.move(np.full(4, v, np.float32), "cuda") for v in (0, 1)]  # in place
    run(batchnorm.update_running_cuda, *running, *stats, x.size // 4, 0.1)
    running = [backend.to_numpy(r) for r in running]
    np.testing.assert_allclose(running[0], 0.1 * mean, rtol=1e-6)
    np.testing.assert_allclose(running[1], 0.9 + 0.1 * var * 111 / 110, rtol=1e-6)
    y16 = run(batchnorm.batch_norm_forward_cuda, x16, *stats, w16, b16, 1e-5)
    y_ref, xhat = batchnorm.batch_norm_forward_numpy(
        x64, mean, np.zeros(4), var, w.astype(np.float64), b.astype(np.float64), 1e-5
    )
    assert_within_ulps(y16, y_ref, dtype, 1, "batch_norm forward")
    for training in (True, False):
        dx16, dw16, db16 = run(
            batchnorm.batch_norm_backward_cuda, dy16, x16, *stats, w16, 1e-5, training
        )
        dx_ref, dw_ref, db_ref = batchnorm.batch_norm_backward_numpy(
            dy.astype(np.float64), xhat, var, w.astype(np.float64), 1e-5, training
        )
        assert dw16.dtype == db16.dtype == dx16.dtype == np.dtype(dtype)
        assert_within_ulps(dw16, dw_ref, dtype, 1, "batch_norm dweight")
        assert_within_ulps(db16, db_ref, dtype, 1, "batch_norm dbias")
        assert_within_ulps(dx16, dx_ref, dtype, 2, "batch_norm dx")
    return True


CONV = dict(kernel=(3, 2), stride=(2, 1), padding=(1, 1, 1, 1), dilation=(1, 2))


def check_conv(dtype):
    """im2col copies exactly, col2im sums in float (1 ulp), bias_add rounds x + b once."""
    x16, x = inputs16((2, 3, 7, 6), dtype)
    window = Window2d.over(7, 6, **CONV)
    cols16 = run(conv.im2col_cuda, x16, window)
    assert np.array_equal(to_float32(cols16), conv.im2col_numpy(x, window))
    dcols16, dcols = inputs16(cols16.shape, dtype, seed=1)
    dx16 = run(conv.col2im_cuda, dcols16, x.shape, window)
    dx_ref = conv.col2im_numpy(dcols.astype(np.float64), x.shape, window)
    assert_within_ulps(dx16, dx_ref, dtype, 1, "col2im")
    y16, y = inputs16((4, 9), dtype, seed=2)
    b16, b = inputs16((4,), dtype, seed=3)
    y_device = backend.move(y16, "cuda")  # bias_add works in place
    run(conv.bias_add_cuda, y_device, b16)
    assert np.array_equal(to_float32(backend.to_numpy(y_device)), round16(y + b[:, None], dtype))
    return True


def check_pool(dtype):
    """The 16-bit maximum is the float maximum of the same values, ties to the first; backward
    sums in float. pool.py pools uint16 as integers, so bfloat16 goes through cuda.launch."""
    x16, x = inputs16((2, 3, 9, 8), dtype)
    x16[0, 0, :3, :3] = x16[0, 0, 0, 0]  # a tie: the first maximum must win
    x = to_float32(x16)
    window = Window2d.over(9, 8, (3, 3), stride=(2, 2), padding=(1, 1, 1, 1), dilation=(1, 1))
    y16 = backend.move(np.empty((2, 3, window.oh, window.ow), dtype=x16.dtype), "cuda")
    argmax = backend.move(np.empty((2, 3, window.oh, window.ow), dtype=np.int32), "cuda")
    sizes = cuda.i32(3, 9, 8, *window)
    launch = partial(cuda.launch, "pool", grid=cuda.grid_for(x.size), block=(cuda.THREADS,))
    launch(kernel="max_pool2d_forward", dtype=dtype,
           args=(backend.move(x16, "cuda"), y16, argmax, cuda.i64(y16.size), *sizes))  # fmt: skip
    y_ref, argmax_ref = pool.max_pool2d_forward_numpy(x, window)
    assert np.array_equal(to_float32(backend.to_numpy(y16)), y_ref)
    assert np.array_equal(backend.to_numpy(argmax), argmax_ref)
    dy16, dy = inputs16(y_ref.shape, dtype, seed=1)
    dx16 = backend.move(np.empty_like(x16), "cuda")
    launch(kernel="max_pool2d_backward", dtype=dtype,
           args=(backend.move(dy16, "cuda"), argmax, dx16, cuda.i64(x.size), *sizes))  # fmt: skip
    dx_ref = pool.max_pool2d_backward_numpy(dy.astype(np.float64), argmax_ref, x.shape)
    assert_within_ulps(backend.to_numpy(dx16), dx_ref, dtype, 1, "max_pool2d backward")
    return True


def check_loss(dtype):
    """Cross-entropy of 16-bit logits: losses and lse in float32 against float64 NumPy, dz within
    1 ulp; the options kernels (class weights, smoothing, an ignored row) likewise."""
    z16, z = inputs16((5, 300), dtype)
    z16 = to_storage(z * 4, dtype)  # logits spread over a few units, as a trained net's
    z = to_float32(z16).astype(np.float64)
    t = np.array([3, 0, 299, 150, 7], dtype=np.int32)
    losses, lse = run(loss.cross_entropy_forward_cuda, z16, t)
    losses_ref, lse_ref = loss.cross_entropy_forward_numpy(z, t)
    assert losses.dtype == lse.dtype == np.float32
    np.testing.assert_allclose(losses, losses_ref, rtol=2e-6)
    np.testing.assert_allclose(lse, lse_ref, rtol=2e-6)
    dz16 = run(loss.cross_entropy_backward_cuda, 2.0, z16, t, lse)
    assert_within_ulps(dz16, loss.cross_entropy_backward_numpy(2.0, z, t, lse_ref), dtype, 1, "dz")
    w16, w = inputs16((300,), dtype, seed=4, offset=3.0)
    t[2] = -100
    options = (to_storage(np.abs(w), dtype), -100, 0.1)
    reference_options = (np.abs(w).astype(np.float64), -100, 0.1)
    got = run(loss.cross_entropy_options_forward_cuda, z16, t, None, *options)
    expected = loss.cross_entropy_options_forward_numpy(z, t, None, *reference_options)
    for g, e in zip(got, expected):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, e, rtol=2e-6, atol=1e-6)
    scale = np.linspace(0.5, 1.5, 5).astype(np.float32)
    dz16 = run(loss.cross_entropy_options_backward_cuda, scale, z16, t, None, *options, *got[1:3])
    dz_ref = loss.cross_entropy_options_backward_numpy(
        scale.astype(np.float64), z, t, None, *reference_options, *expected[1:3]
    )
    assert_within_ulps(dz16, dz_ref, dtype, 1, "options dz")
    return True


CHECKS = {
    "conv": check_conv,
    "pool": check_pool,
    "loss": check_loss,
    "batchnorm": check_batchnorm,
    "lrn": check_lrn,
    "dropout": check_dropout,
    "activation": check_activation,
    "reduce": check_reduce,
    "sgd": check_sgd,
}


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=HALF_IDS)
@pytest.mark.parametrize("op", sorted(CHECKS))
def test_16bit_kernel_matches_numpy(op, dtype, kernel_device):
    assert CHECKS[op](dtype)


def test_dropout_mask_is_the_same_at_every_precision(kernel_device):
    x = np.random.default_rng(0).uniform(0.5, 2.0, (4, 257)).astype(np.float32)
    key = 987654321
    zeros = []
    for dtype in (np.dtype(np.float32), np.dtype(np.float64), *HALF_TYPES):
        y = run(dropout.dropout_apply_cuda, to_storage(x, dtype), key, 0.5)
        zeros.append(to_float32(y) == 0)
    assert all(np.array_equal(zeros[0], z) for z in zeros[1:])
    assert 0.4 < zeros[0].mean() < 0.6


# A bug that only 16-bit storage shows: each is a no-op for float and double (T == acc_t<T>), so
# the float64 mutation tests in tests/test_kernels.py cannot catch it; the checks above must.
MUTATIONS_16BIT = [
    ("sgd.cu", "master[i] = m;", "master[i] = to_acc(from_acc<T>(m));", "sgd"),
    ("lrn.cu", "s[index] = scale;", "s[index] = to_acc(from_acc<T>(scale));", "lrn"),
    ("reduce.cu", "partial[threadIdx.x] = sum;", "partial[threadIdx.x] = to_acc(from_acc<T>(sum));",
     "reduce"),
    ("batchnorm.cu", "var[c] = v > Acc(0) ? v : Acc(0);",
     "var[c] = to_acc(from_acc<T>(v > Acc(0) ? v : Acc(0)));", "batchnorm"),
    ("loss.cu", "return real_log(block_sum(partial, sum));",
     "return to_acc(from_acc<T>(real_log(block_sum(partial, sum))));", "loss"),
    ("conv.cu", "sum += to_acc(dcols[((row * N + n) * OH + oy) * OW + ox]);",
     "sum = to_acc(from_acc<T>(sum + to_acc(dcols[((row * N + n) * OH + oy) * OW + ox])));",
     "conv"),
    ("lrn.cu", "Acc scale = k + alpha * sum;", "Acc scale = k + alpha * to_acc(from_acc<T>(sum));",
     "lrn"),
]  # fmt: skip


@pytest.mark.parametrize("file, old, new, op", MUTATIONS_16BIT, ids=[m[0] for m in MUTATIONS_16BIT])
def test_a_16bit_mutation_is_caught(file, old, new, op, tmp_path, emulate):
    shutil.copytree(cuda.kernel_dir(), tmp_path, dirs_exist_ok=True)
    source = (tmp_path / file).read_text()
    assert source.count(old) >= 1, f"mutation target not found in {file}: {old}"
    (tmp_path / file).write_text(source.replace(old, new, 1))
    for dtype in HALF_TYPES:
        with cuda.kernel_source_override(tmp_path), pytest.raises(AssertionError):
            CHECKS[op](dtype)


def test_16bit_tensor_ops_through_autograd(emulate):
    """The ops' GPU branches with float16 tensors: LRN, dropout and bias_relu forward and backward
    against the NumPy path on float32 copies of the same values."""
    x16, x = inputs16((2, 6, 3, 3), np.float16)
    b16, b = inputs16((6,), np.float16, seed=1)

    def run(device, xs, bs):
        mdl.manual_seed(3)
        xt = mdl.tensor(xs, requires_grad=True, device=device, dtype=xs.dtype)
        bt = mdl.tensor(bs, requires_grad=True, device=device, dtype=bs.dtype)
        y = F.dropout(F.local_response_norm(F.bias_relu(xt, bt), 3, 1.0, 0.75, 2.0), 0.25)
        y.backward(np.ones(y.shape, dtype=xs.dtype))
        assert y.dtype == xt.grad.dtype == bt.grad.dtype == xs.dtype
        return [t.astype(np.float32) for t in (y.numpy(), xt.grad.numpy(), bt.grad.numpy())]

    got = run("cuda", x16, b16)
    expected = run("cpu", x, b)
    # Each op rounds its output to float16, so a chain differs from the float32 chain by a few
    # of those roundings (2^-11 each), more where LRN's backward subtracts two close terms.
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-2, atol=4e-3 * np.abs(e).max())


# ---- master weights ------------------------------------------------------------------------------
@pytest.mark.parametrize("device", ["cpu", "cuda"])
@pytest.mark.parametrize(
    "make", [lambda p: optim.SGD(p, lr=1e-4), lambda p: optim.Adam(p, 1e-4)], ids=["SGD", "Adam"]
)
def test_master_weights_stay_float32_and_keep_small_updates(device, make, monkeypatch):
    """w = 1 in float16 (ulp 2^-10 ~ 9.8e-4): ten updates of 1e-4 each round away in float16, but
    the float32 master accumulates them and w moves to the nearest float16 of 0.999."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    p = mdl.nn.Parameter(np.ones(8, dtype=np.float16), dtype=np.float16, device=device)
    opt = make([p])
    for _ in range(10):
        p.grad = mdl.tensor(np.ones(8, dtype=np.float16), dtype=np.float16, device=device)
        opt.step()
    master = opt.state[0]["master"]
    assert p.dtype == np.float16 and master.dtype == np.float32
    assert all(v.dtype == np.float32 for v in opt.state[0].values() if hasattr(v, "dtype"))
    np.testing.assert_allclose(master, 1 - 10 * 1e-4, rtol=1e-5)
    assert np.all(p.numpy() == np.float16(0.999))  # not 1.0: the small steps were kept
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert opt.state[0]["master"].dtype == np.float32


def test_plain_float16_update_would_lose_the_steps():
    """The reason for master weights, shown: the same update applied in float16 does nothing."""
    w = np.float16(1.0)
    for _ in range(10):
        w = np.float16(w - np.float16(1e-4))
    assert w == np.float16(1.0)


# ---- GradScaler ----------------------------------------------------------------------------------
def test_grad_scaler_defaults_are_pytorchs():
    scaler = precision.GradScaler()
    assert scaler.get_scale() == 2.0**16
    assert (scaler.growth_factor, scaler.backoff_factor, scaler.growth_interval) == (2.0, 0.5, 2000)


@pytest.mark.filterwarnings("ignore:overflow encountered")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_forced_overflow_skips_the_step_and_halves(device, monkeypatch):
    """A float16 model whose scaled gradient overflows float16: the step is skipped (weights and
    master unchanged), the scale halves; at a scale that fits, the step runs."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    w0 = np.full((4, 3), 0.5, dtype=np.float16)
    w = mdl.nn.Parameter(w0.copy(), dtype=np.float16, device=device)
    opt = optim.SGD([w], lr=0.01, momentum=0.9)
    scaler = precision.GradScaler(init_scale=2.0**16)
    x = mdl.tensor(np.full((2, 4), 8.0), dtype=np.float16, device=device)

    def one_step():
        opt.zero_grad()
        loss = (x @ w).astype(np.float32).sum()
        scaler.scale(loss).backward()  # dw = 2^16 * 16 = 2^20 > 65504: inf in float16
        stepped = scaler.step(opt)
        scaler.update()
        return stepped

    assert not one_step()
    assert scaler.get_scale() == 2.0**15 and scaler.skipped_steps == 1
    assert np.array_equal(w.numpy(), w0) and opt.state[0] == {}  # nothing moved
    while not one_step():  # halves until 2^s * 16 fits in float16: 2^11
        pass
    assert scaler.get_scale() == 2.0**11 and scaler.skipped_steps == 5
    master = opt.state[0]["master"]
    np.testing.assert_allclose(master, 0.5 - 0.01 * 16, rtol=1e-6)  # unscaled in float32
    assert opt.grad_scale == 1.0


def test_grad_scaler_grows_after_growth_interval_clean_steps():
    w = mdl.nn.Parameter(np.ones(3))
    opt = optim.SGD([w], lr=0.0)
    scaler = precision.GradScaler(init_scale=8.0, growth_interval=3)
    scales = []
    for step in range(11):
        w.grad = mdl.tensor(np.full(3, np.inf if step == 4 else 1.0))
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    # clean x3 -> x2 (the count restarts); clean, inf -> /2 (restarts); clean x3 -> x2; x3 -> x2
    assert scales == [8.0, 8.0, 16.0, 16.0, 8.0, 8.0, 8.0, 16.0, 16.0, 16.0, 32.0]


def test_grad_scaler_matches_torch():
    """The scale over a run of clean and overflowing steps is PyTorch's, step for step."""
    torch = pytest.importorskip("torch")
    pattern = [0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0]  # 1: an inf gradient
    t_param = torch.nn.Parameter(torch.ones(2))
    t_opt = torch.optim.SGD([t_param], lr=0.0)
    t_scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    w = mdl.nn.Parameter(np.ones(2))
    opt = optim.SGD([w], lr=0.0)
    scaler = precision.GradScaler(init_scale=1024.0, growth_interval=3)
    for bad in pattern:
        factor = np.full(2, np.inf if bad else 1.0)
        t_opt.zero_grad()
        t_scaler.scale((t_param * torch.from_numpy(factor)).sum()).backward()
        t_scaler.step(t_opt)
        t_scaler.update()
        opt.zero_grad()
        scaler.scale((w * mdl.tensor(factor)).sum()).backward()
        scaler.step(opt)
        scaler.update()
        assert scaler.get_scale() == t_scaler.get_scale()
    mine, theirs = scaler.state_dict(), t_scaler.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(float(mine[k]) == float(theirs[k]) for k in mine)


def test_grad_scaler_state_dict_round_trip_and_misuse():
    scaler = precision.GradScaler(init_scale=4.0, growth_interval=5)
    w = mdl.nn.Parameter(np.ones(2))
    opt = optim.SGD([w], lr=0.1)
    w.grad = mdl.tensor(np.ones(2))
    scaler.unscale_(opt)
    assert opt.grad_scale == 0.25
    with pytest.raises(RuntimeError, match="already"):
        scaler.unscale_(opt)
    scaler.step(opt)
    with pytest.raises(RuntimeError, match="already"):
        scaler.step(opt)
    scaler.update()
    np.testing.assert_allclose(w.numpy(), 1 - 0.1 * 0.25)  # the step used g / scale
    other = precision.GradScaler()
    other.load_state_dict(scaler.state_dict())
    assert other.state_dict() == scaler.state_dict()
    with pytest.raises(RuntimeError, match="no unscale_"):
        other.update()
    off = precision.GradScaler(enabled=False)
    assert off.get_scale() == 1.0 and off.state_dict() == {}


# ---- modes ---------------------------------------------------------------------------------------
def test_precision_modes():
    with pytest.raises(ValueError, match="fp32"):
        precision.Precision("fp8")
    assert precision.Precision("fp16").loss_scaling and not precision.Precision("bf16").loss_scaling
    assert precision.Precision("bf16").dtype == BF16
    model = mdl.nn.Sequential(mdl.nn.Linear(3, 2), mdl.nn.ReLU())
    precision.Precision("fp16").cast_model(model)
    assert all(p.dtype == np.float16 for p in model.parameters())
    precision.Precision("bf16").cast_model(model)
    assert all(p.dtype == BF16 for p in model.parameters())
    logits = mdl.tensor(np.ones((2, 3)), dtype=np.float16)
    assert precision.Precision.loss_input(logits).dtype == np.float32
    with precision.Precision("tf32").matmul_mode():
        assert precision.tf32_enabled()
    assert not precision.tf32_enabled()


# ---- the benchmark's precision flag ------------------------------------------------------------
def _bench():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import alexnet

    return alexnet


def test_benchmark_refuses_16bit_on_the_cpu_clearly():
    bench = _bench()
    for mode in ("tf32", "fp16", "bf16"):
        with pytest.raises(SystemExit, match="GPU only"):
            bench.main(["--precision", mode, "--ops", "relu1", "--no-model"])


@pytest.mark.parametrize("name", ["relu1", "lrn2", "pool5", "dropout7"])
def test_benchmark_ops_run_in_float16_on_the_emulator(name, emulate):
    """Our side of ``--precision fp16`` at batch 1 (the timings mean nothing here: this checks
    that the float16 path runs and stays float16)."""
    bench = _bench()
    ours = bench.Ours("cuda", "fp16")
    assert ours.scaler is not None and ours.scaler.get_scale() == 2.0**16
    x = ours.tensor(np.ones((1, 3), dtype=np.float32))
    assert x.dtype == np.float16
    result = bench.bench_op(ours, name, 1, 0, 1)
    assert result["forward_backward"]["median_ms"] > 0
    ours = bench.Ours("cuda", "bf16")  # bfloat16: no loss scaling
    assert ours.scaler is None or not ours.scaler.enabled
    assert ours.tensor(np.ones((1, 3), dtype=np.float32)).dtype == BF16
    assert bench.bench_op(ours, name, 1, 0, 1)["forward_backward"]["median_ms"] > 0


def train_steps(model, mode, x, t, steps, device, lr, init_scale=2.0**16):
    """``steps`` SGD steps (momentum 0.9) of ``model`` on (x, t) in precision ``mode``, as fit
    takes them: model and input cast, float32 loss, float32 master weights, GradScaler.
    -> (the losses, the scaler)."""
    mode.cast_model(model.to(device))
    opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = precision.GradScaler(init_scale=init_scale, enabled=mode.loss_scaling)
    xs = mode.cast_input(mdl.tensor(x, device=device))
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(mode.loss_input(model(xs)), t)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss.numpy()))
    return np.array(losses), scaler


@pytest.mark.parametrize("name", ["fp16", "bf16"])
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_16bit_training_follows_float32(device, name, monkeypatch):
    """A small classifier trained in float16 (model cast, float32 loss and master weights,
    GradScaler) or bfloat16 (the same, without loss scaling) follows the same run in float32
    step for step, and learns."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 20)).astype(np.float32)  # small: the loss kernel has barriers
    t = (x[:, :3] @ np.array([1.0, -1.0, 0.5]) > 0).astype(np.int64) + (x[:, 3] > 1)

    def train(mode):
        mdl.manual_seed(0)
        model = mdl.nn.Sequential(mdl.nn.Linear(20, 32), mdl.nn.ReLU(), mdl.nn.Linear(32, 3))
        return train_steps(model, mode, x, t, 15, device, lr=0.1)

    reference, _ = train(precision.Precision("fp32"))
    half, scaler = train(precision.Precision(name))
    assert scaler.get_scale() == (2.0**16 if name == "fp16" else 1.0)
    assert scaler.skipped_steps == 0
    assert half[-1] < 0.5 * half[0]
    # bfloat16 keeps 8 significant bits to float16's 11: its steps wander 8 times as far
    tolerance = 0.02 if name == "fp16" else 0.08
    np.testing.assert_allclose(half, reference, rtol=tolerance, atol=tolerance / 2)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_16bit_convnet_step_follows_float32(name, emulate):
    """AlexNet's layer kinds in miniature (conv, ReLU, LRN, overlapping max-pool, dropout, linear,
    cross-entropy) through every 16-bit kernel: three float16 (bfloat16) training steps on the
    emulated GPU follow the float32 ones."""
    nn = mdl.nn
    x = np.random.default_rng(1).standard_normal((2, 3, 11, 11)).astype(np.float32)
    t = np.array([1, 4])

    def train(mode):
        mdl.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.LocalResponseNorm(3, 1.0, 0.75, 2.0),
            nn.MaxPool2d(3, 2), nn.Flatten(), nn.Dropout(0.5), nn.Linear(6 * 5 * 5, 5),
        )  # fmt: skip
        for i, p in enumerate(model.parameters()):  # a fixed, well-scaled start for both
            p.data = np.random.default_rng(i).standard_normal(p.shape).astype(p.dtype) * 0.3
        losses, scaler = train_steps(model, mode, x, t, 3, "cuda", lr=0.05, init_scale=2.0**10)
        return losses, [p.dtype for p in model.parameters()], scaler

    reference, _, _ = train(precision.Precision("fp32"))
    mode = precision.Precision(name)
    half, dtypes, scaler = train(mode)
    assert all(d == mode.dtype for d in dtypes)
    assert scaler.skipped_steps == 0  # (fp16 at the default 2^16: the first step overflows)
    np.testing.assert_allclose(half, reference, rtol=0.02 if name == "fp16" else 0.06)
