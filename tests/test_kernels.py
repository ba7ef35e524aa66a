"""Tier 2 for every kernel file: NVRTC compiles it for each architecture we support, and a copy
with one index broken on purpose is caught by the emulated comparison with the NumPy path."""

import os
import shutil

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import cuda, kernel_source, optim
from tests.helpers import distinct, forward_backward, random

KERNEL_FILES = sorted(p.name for p in cuda.kernel_dir().glob("*.cu"))


def test_every_op_family_has_a_kernel_file():
    assert {
        "conv.cu",
        "pool.cu",
        "lrn.cu",
        "dropout.cu",
        "activation.cu",
        "loss.cu",
        "sgd.cu",
        "reduce.cu",
        "batchnorm.cu",
    } <= set(KERNEL_FILES)


def nvrtc_or_skip():
    """NVRTC from cupy + cuda-toolkit[nvrtc]; CI installs both, so there a missing NVRTC fails."""
    try:
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as err:  # ImportError, or CuPy without a loadable NVRTC library
        if os.environ.get("CI"):
            pytest.fail(f"CI must compile the kernels with NVRTC, but it is not usable: {err}")
        pytest.skip(f"NVRTC is not usable here (pip install -e '.[nvrtc]'): {err}")
    return nvrtc


def nvrtc_compile(name: str, arch: str, expressions: list[str]) -> None:
    """Compile kernels/``name`` with NVRTC for ``arch`` and our compile options, instantiating
    ``expressions`` (name expressions such as ``conv2d_forward<float>``); fail the test with
    NVRTC's log if it does not compile, or if an instantiation is missing from the PTX."""
    nvrtc = nvrtc_or_skip()
    source = (cuda.kernel_dir() / name).read_text()
    program = nvrtc.createProgram(source, name, [], [])
    try:
        for expression in expressions:
            nvrtc.addNameExpression(program, expression)
        options = [f"--gpu-architecture={arch}", *cuda.compile_options(cuda.kernel_dir())]
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError:
            pytest.fail(f"{name} does not compile for {arch}:\n{nvrtc.getProgramLog(program)}")
        ptx = nvrtc.getPTX(program)
        for expression in expressions:
            lowered = nvrtc.getLoweredName(program, expression)
            assert lowered.encode() in ptx, f"{expression} missing from the PTX"
    finally:
        nvrtc.destroyProgram(program)


@pytest.mark.parametrize("arch", cuda.ARCHITECTURES)
@pytest.mark.parametrize("name", KERNEL_FILES)
def test_nvrtc_compiles(name, arch):
    expressions = kernel_source.name_expressions((cuda.kernel_dir() / name).read_text())
    assert expressions, f"{name} defines no template <typename T> __global__ kernels"
    nvrtc_compile(name, arch, expressions)


# ---- break a kernel on purpose -------------------------------------------------------------------
def _matches(fn, arrays):
    expected = forward_backward(fn, arrays, "cpu", np.float64)
    got = forward_backward(fn, arrays, "cuda", np.float64)
    pairs = [(got[0], expected[0])] + list(zip(got[1], expected[1]))
    return all(np.allclose(a, b, rtol=1e-9, atol=1e-10) for a, b in pairs)


def conv_ok():
    arrays = (random((2, 4, 9, 8)), random((6, 2, 3, 3), 1), random((6,), 2))
    return _matches(lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2), arrays)


def pool_ok():
    return _matches(lambda x: F.max_pool2d(x, 3, 2, padding=1), [distinct((2, 3, 9, 9))])


def pool_ties_ok():
    x = np.round(random((2, 3, 9, 9)))  # many ties: the first maximum must win
    return _matches(lambda x: F.max_pool2d(x, 3, 2), [x])


def lrn_ok():
    return _matches(lambda a: F.local_response_norm(a, 5, 1.0, 0.75, 2.0), [random((2, 7, 3, 3))])


def dropout_ok():
    return _matches(lambda x: F.dropout(x, 0.5), [random((4, 300))])


def relu_ok():
    return _matches(F.relu, [random((3, 50))])


def bias_relu_ok():
    return _matches(F.bias_relu, [random((3, 5, 4, 4)), random((5,), 1)])


def loss_ok():
    t = np.array([3, 0, 9, 299])
    return _matches(lambda z: F.cross_entropy(z, t), [random((4, 300))])


def conv_dilated_ok():
    arrays = (random((2, 2, 11, 10)), random((4, 2, 3, 3), 1), random((4,), 2))
    kw = dict(stride=(1, 2), padding=(2, 1), dilation=(2, 3))  # dh != dw != sh: each one shows
    return _matches(lambda x, w, b: F.conv2d(x, w, b, **kw), arrays)


def pool_dilated_ok():
    kw = dict(kernel_size=3, stride=(2, 1), padding=1, dilation=(2, 3), ceil_mode=True)
    return _matches(lambda x: F.max_pool2d(x, **kw), [distinct((2, 2, 11, 12))])


def loss_options_ok():
    """Class weights, an ignored target, label smoothing, every row's sum over 300 classes."""
    t = np.array([3, -100, 9, 299])
    weight = np.linspace(0.5, 2.0, 300)
    return _matches(
        lambda z: F.cross_entropy(z, t, weight=weight, label_smoothing=0.2), [random((4, 300))]
    )


def loss_soft_ok():
    p = np.random.default_rng(5).dirichlet(np.ones(300), size=4)
    return _matches(lambda z: F.cross_entropy(z, p, reduction="none"), [random((4, 300))])


def _batchnorm_run(device):
    running = [mdl.tensor(np.zeros(4), device=device), mdl.tensor(np.ones(4), device=device)]
    arrays = [random((3, 4, 10, 11)) + 2.0, random((4,), 1), random((4,), 2)]
    train = forward_backward(lambda x, w, b: F.batch_norm(x, *running, w, b, True), arrays, device)
    test = forward_backward(lambda x, w, b: F.batch_norm(x, *running, w, b), arrays, device)
    return [train[0], *train[1], test[0], *test[1], *(r.numpy() for r in running)]


def batchnorm_ok():
    """Training forward and backward with the running statistics, then eval; 330 values per
    channel, so every thread of the reduction tree holds a partial sum."""
    return all(
        np.allclose(a, b, rtol=1e-9, atol=1e-10)
        for a, b in zip(_batchnorm_run("cpu"), _batchnorm_run("cuda"))
    )


def sgd_ok():
    results = []
    for device in ("cpu", "cuda"):
        p = mdl.nn.Parameter(np.linspace(-1, 1, 40), device=device)
        opt = optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=0.01)
        for step in range(3):
            p.grad = mdl.tensor(np.cos(np.arange(40.0) + step), device=device)
            opt.step()
        results.append(p.numpy())
    return np.allclose(*results, rtol=1e-12)


MUTATIONS = [
    ("conv.cu", "int h = top + i * dh;", "int h = top + i * dh + 1;", conv_ok),
    ("conv.cu", "int oy_hi = min(hp / sh, OH - 1);", "int oy_hi = min(hp / sh, OH - 2);", conv_ok),
    (
        "conv.cu",
        "int ox_lo = wp < reach_w ? 0 : (wp - reach_w) / sw + 1;",
        "int ox_lo = wp < reach_w ? 0 : (wp - reach_w) / sw + 2;",
        conv_ok,
    ),
    # dilation arithmetic: a tap that ignores dilation, a reach without it, a tap off its grid
    ("conv.cu", "int w = left + j * dw;", "int w = left + j;", conv_dilated_ok),
    ("conv.cu", "int reach_h = dh * (kh - 1) + 1;", "int reach_h = kh;", conv_dilated_ok),
    ("conv.cu", "int j = dj / dw;", "int j = dj / dh;", conv_dilated_ok),
    ("conv.cu", "if (di % dh != 0) continue;", "if (di % sh != 0) continue;", conv_dilated_ok),
    ("conv.cu", "int n = col / (OW * OH);", "int n = col / (OW * OH + 1);", conv_ok),
    ("conv.cu", "int o = index / M;", "int o = index / (M + 1);", conv_ok),
    ("pool.cu", "int w = ox * sw - pw + j * dw;", "int w = ox * sw - pw + j * dw + 1;", pool_ok),
    ("pool.cu", "int h = oy * sh - ph + i * dh;", "int h = oy * sh - ph + i;", pool_dilated_ok),
    ("pool.cu", "int reach_w = dw * (kw - 1) + 1;", "int reach_w = kw;", pool_dilated_ok),
    ("pool.cu", "if (v > best) {", "if (v >= best) {", pool_ties_ok),
    (
        "pool.cu",
        "int ox_end = min((w + pw) / sw + 1, OW);",
        "int ox_end = min((w + pw) / sw, OW);",
        pool_ok,
    ),
    ("lrn.cu", "j <= min(C - 1, c + half)", "j < min(C - 1, c + half)", lrn_ok),
    (
        "lrn.cu",
        "sum += to_acc(db[at]) * to_acc(b[at]) / s[at];",
        "sum += to_acc(db[at]) * to_acc(b[at]);",
        lrn_ok,
    ),
    ("dropout.cu", "return (h >> 8) >= threshold;", "return (h >> 7) >= threshold;", dropout_ok),
    (
        "dropout.cu",
        "y[i] = from_acc<T>(dropout_keep(key_lo, key_hi, first + i, threshold)",
        "y[i] = from_acc<T>(dropout_keep(key_lo, key_hi, first + i + 1, threshold)",
        dropout_ok,
    ),
    (
        "activation.cu",
        "dx[i] = to_acc(y[i]) > acc_t<T>(0) ? dy[i]",
        "dx[i] = to_acc(y[i]) >= acc_t<T>(0) ? dy[i]",
        relu_ok,
    ),
    # common.cuh's block_sum, the tree loss.cu and batchnorm.cu share: caught by both
    (
        "common.cuh",
        "if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];",
        "if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half - 1];",
        loss_ok,
    ),
    ("common.cuh", "Acc result = partial[0];", "Acc result = partial[1];", batchnorm_ok),
    ("loss.cu", "long long n = i / K;", "long long n = i / (K + 1);", loss_ok),
    (
        "loss.cu",
        "Acc spread = smoothing / Acc(K);",
        "Acc spread = smoothing / Acc(K - 1);",
        loss_options_ok,
    ),
    (
        "loss.cu",
        "q_total = block_sum(partial, q_total);",
        "q_total = block_sum(partial, weighted);",
        loss_options_ok,
    ),
    (
        "loss.cu",
        "counted[n] = t[n] == ignore_index ? Acc(0) : to_acc(weight[t[n]]);",
        "counted[n] = t[n] == ignore_index ? Acc(0) : Acc(1);",
        loss_options_ok,
    ),
    ("loss.cu", "* q_sum[n] - q));", "* q_sum[n] - q * acc_t<T>(0.5)));", loss_options_ok),
    (
        "loss.cu",
        "to_acc(p[n * K + k]) + spread);",
        "to_acc(p[n * K + k + 1]) + spread);",
        loss_soft_ok,
    ),
    ("sgd.cu", "m -= lr * v[i];", "m -= lr * g;", sgd_ok),
    (
        "activation.cu",
        "to_acc(b[(i / plane) % C]);",
        "to_acc(b[(i / plane + 1) % C]);",
        bias_relu_ok,
    ),
    ("reduce.cu", "sum += to_acc(row[p]);", "sum += to_acc(row[0]);", conv_ok),
    ("reduce.cu", "for (int n = 0; n < N; ++n)", "for (int n = 1; n < N; ++n)", bias_relu_ok),
    (
        "reduce.cu",
        "partial[threadIdx.x] += partial[threadIdx.x + half];",
        "partial[threadIdx.x] += partial[threadIdx.x + half / 2];",
        bias_relu_ok,
    ),
    (
        "batchnorm.cu",
        "return (n * C + c) * plane + p;",
        "return (n * C + c) * plane;",
        batchnorm_ok,
    ),
    (
        "batchnorm.cu",
        "d_sq = block_sum(partial, d_sq);",
        "d_sq = block_sum(partial, d_sum);",
        batchnorm_ok,
    ),
    (
        "batchnorm.cu",
        "Acc unbiased = var[c] * (Acc(M) / Acc(M - 1));",
        "Acc unbiased = var[c];",
        batchnorm_ok,
    ),
    (
        "batchnorm.cu",
        "(Acc(M) * to_acc(dy[index]) - dbias[c] - xhat * dweight[c]));",
        "(Acc(M) * to_acc(dy[index]) - dbias[c]));",
        batchnorm_ok,
    ),
    (
        "batchnorm.cu",
        "dweight[c] = sum_dy_d / real_sqrt(var[c] + eps);",
        "dweight[c] = sum_dy_d;",
        batchnorm_ok,
    ),
    (
        "batchnorm.cu",
        "dx[index] = from_acc<T>(w * invstd * to_acc(dy[index]));",
        "dx[index] = from_acc<T>(invstd * to_acc(dy[index]));",
        batchnorm_ok,
    ),
]


@pytest.mark.parametrize(
    "file, old, new, check", MUTATIONS, ids=[f"{m[0]}:{i}" for i, m in enumerate(MUTATIONS)]
)
def test_a_broken_kernel_is_caught(file, old, new, check, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    shutil.copytree(cuda.kernel_dir(), tmp_path, dirs_exist_ok=True)
    with cuda.kernel_source_override(tmp_path):
        assert check(), "the untouched copy must pass, or the test proves nothing"
    source = (tmp_path / file).read_text()
    assert source.count(old) >= 1, f"mutation target not found in {file}: {old}"
    (tmp_path / file).write_text(source.replace(old, new, 1))
    with cuda.kernel_source_override(tmp_path):
        assert not check(), f"breaking {file} ({old!r} -> {new!r}) went unnoticed"


def test_a_launch_with_the_wrong_number_of_arguments_is_refused_by_name(monkeypatch):
    """Every kernel's parameter list is read from its source; a launch that passes another
    number of arguments (which a GPU would run on garbage and the emulator crash on) is a
    TypeError naming the kernel and its parameters, before anything runs."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    for path in sorted(cuda.kernel_dir().glob("*.cu")):
        source = path.read_text()
        assert set(kernel_source.kernel_parameters(source)) == set(
            kernel_source.kernel_names(source)
        ), path.name
    x = np.ones(4, np.float32)
    args = (x, np.empty_like(x), cuda.i64(4), np.uint32(1), np.uint32(2), np.uint32(3))
    with pytest.raises(TypeError, match=r"dropout_apply \(dropout\): takes 8 arguments"):
        cuda.launch("dropout", "dropout_apply", np.float32, (1,), (32,), (*args, np.float32(2)))


def test_every_parameter_type_of_our_kernels_is_checked_at_launch():
    """cuda.launch checks each argument against its parameter's C type; a type it does not know
    is not checked, so none of ours may have one."""
    known = {"T", "acc_t<T>", *cuda.FIXED_CTYPES}
    for path in sorted(cuda.kernel_dir().glob("*.cu")):
        for kernel, parameters in kernel_source.kernel_parameters(path.read_text()).items():
            for parameter in parameters:
                base = kernel_source.parameter_type(parameter)[0]
                assert base in known, f"{path.name}: {kernel}'s '{parameter}'"
