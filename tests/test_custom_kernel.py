"""Kernels from a .cu file in the user's own folder (minidl.cuda.load_module): the same loader,
NVRTC options, cache and emulator as ours, and clear errors when the file is not usable."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minidl import cuda, kernel_source
from tests.test_kernels import nvrtc_or_skip

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"

# A user's kernel: includes our common.cuh (FOR_EACH_INDEX, real_exp) and a header of its own.
SOURCE = """\
#include "common.cuh"
#include "my_helpers.cuh"

template <typename T>
__global__ void scaled_exp(const T* x, T* y, long long total, T scale) {
    FOR_EACH_INDEX(i, total) { y[i] = times(real_exp(x[i]), scale); }
}
"""
HELPERS = "template <typename T> __device__ T times(T a, T b) { return a * b; }\n"


@pytest.fixture
def user_folder(tmp_path):
    (tmp_path / "my_op.cu").write_text(SOURCE)
    (tmp_path / "my_helpers.cuh").write_text(HELPERS)
    return tmp_path


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_user_kernel_runs_under_the_emulator(user_folder, dtype, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    module = cuda.load_module(user_folder / "my_op.cu")
    assert module.kernels == ["scaled_exp"]
    x = np.linspace(-2, 2, 1000).astype(dtype)
    y = np.empty_like(x)
    args = (x, y, cuda.i64(x.size), *cuda.real(dtype, 3.0))
    module.launch("scaled_exp", dtype, (2,), (64,), args)  # fewer threads than elements: loops
    np.testing.assert_allclose(y, 3 * np.exp(x), rtol=1e-6 if dtype == np.float32 else 1e-14)
    # the path works in launch() too, as a str
    y[:] = 0
    cuda.launch(str(user_folder / "my_op.cu"), "scaled_exp", dtype, (4,), (256,), args)
    np.testing.assert_allclose(y, 3 * np.exp(x), rtol=1e-6 if dtype == np.float32 else 1e-14)


def test_an_edited_header_is_compiled_again(user_folder, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    module = cuda.load_module(str(user_folder / "my_op.cu"))
    x, y = np.ones(4), np.empty(4)
    args = (x, y, cuda.i64(4), *cuda.real(np.float64, 1.0))
    module.launch("scaled_exp", np.float64, (1,), (32,), args)
    first = y.copy()
    helpers = user_folder / "my_helpers.cuh"
    helpers.write_text(HELPERS.replace("a * b", "a * b + 1"))
    stat = helpers.stat()
    os.utime(helpers, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a visibly newer file
    module.launch("scaled_exp", np.float64, (1,), (32,), args)
    np.testing.assert_allclose(y, first + 1)


def test_user_kernel_compiles_with_nvrtc_and_our_options(user_folder):
    nvrtc = nvrtc_or_skip()
    source = SOURCE
    program = nvrtc.createProgram(source, "my_op.cu", [], [])
    try:
        for expression in kernel_source.name_expressions(source):
            nvrtc.addNameExpression(program, expression)
        options = ["--gpu-architecture=compute_75"]
        options += cuda.compile_options(user_folder, cuda.kernel_dir())
        try:
            nvrtc.compileProgram(program, options)
        except nvrtc.NVRTCError:
            pytest.fail(nvrtc.getProgramLog(program))
    finally:
        nvrtc.destroyProgram(program)


def test_errors_name_the_file_and_what_was_expected(tmp_path, user_folder, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    with pytest.raises(FileNotFoundError, match="expected a .cu file"):
        cuda.load_module(tmp_path / "missing.cu")
    (tmp_path / "plain.cu").write_text("__global__ void k(float* x) {}\n")
    with pytest.raises(ValueError, match="template <typename T> __global__"):
        cuda.load_module(tmp_path / "plain.cu")
    module = cuda.load_module(user_folder / "my_op.cu")
    with pytest.raises(KeyError, match="has no kernel 'scaled'.*scaled_exp"):
        module.launch("scaled", np.float64, (1,), (1,), ())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cuda.launch(str(tmp_path / "gone.cu"), "k", np.float64, (1,), (1,), ())


def test_our_kernels_still_load_by_name(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = np.array([-1.0, 2.0]), np.empty(2)
    cuda.launch("activation", "relu_forward", np.float64, (1,), (32,), (*x, cuda.i64(2)))
    assert x[1].tolist() == [0.0, 2.0]


# A block sum whose barriers sit in a __device__ helper, not in the kernel's own body: the
# emulator must still run the kernel's threads as fibers (a plain loop would abort at the first
# barrier, or sum before the other threads wrote their values).
BLOCK_SUM = """\
#include "common.cuh"

template <typename T>
__device__ T tree_sum(T* partial, T value) {
    partial[threadIdx.x] = value;
    __syncthreads();
    for (int half = blockDim.x / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
        __syncthreads();
    }
    return partial[0];
}

template <typename T>
__global__ void block_sum(const T* x, T* out) {
    __shared__ T partial[64];
    T total = tree_sum(partial, x[threadIdx.x]);
    if (threadIdx.x == 0) out[0] = total;
}
"""


def test_a_barrier_inside_a_device_helper_runs_as_fibers(tmp_path, monkeypatch):
    from minidl import emulator

    assert emulator.kernels_with_barriers(BLOCK_SUM) == {"block_sum"}
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    (tmp_path / "block_sum.cu").write_text(BLOCK_SUM)
    x = np.arange(64, dtype=np.float64)
    out = np.zeros(1)
    cuda.load_module(tmp_path / "block_sum.cu").launch(
        "block_sum", np.float64, (1,), (64,), (x, out)
    )
    assert out[0] == x.sum()


def _good_args(dtype=np.float32):
    x = np.linspace(-1, 1, 8).astype(dtype)
    return [x, np.zeros_like(x), cuda.i64(x.size), *cuda.real(dtype, 2.0)]


@pytest.mark.parametrize("position, value, message", [
    (0, np.zeros(8, np.float64), r"argument 0 'const T\* x' \(T = float32\) expects a float32 "
                                 r"array, got a float64 array"),
    (1, np.float32(0), r"argument 1 'T\* y' .* expects a float32 array, got a NumPy float32 "
                       r"scalar"),
    (2, np.int32(8), r"argument 2 'long long total' .* expects a NumPy int64 scalar, got a NumPy "
                     r"int32 scalar"),
    (2, 8, r"argument 2 'long long total' .* got a Python int"),
    (3, np.int64(2), r"argument 3 'T scale' .* expects a NumPy float32 scalar, got a NumPy int64"),
    (3, np.float64(2), r"argument 3 'T scale' .* expects a NumPy float32 scalar, got .* float64"),
], ids=["float64-array-as-T*", "scalar-as-pointer", "int32-as-long-long", "python-int",
        "numpy-int-as-T", "float64-as-T"])  # fmt: skip
def test_arguments_are_checked_against_the_parameter_types(
    user_folder, monkeypatch, position, value, message
):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    module = cuda.load_module(user_folder / "my_op.cu")
    args = _good_args()
    args[position] = value
    with pytest.raises(TypeError, match=r"scaled_exp \(.*my_op\.cu\): " + message):
        module.launch("scaled_exp", np.float32, (1,), (32,), tuple(args))
    assert not args[1].any()  # refused before anything ran
    module.launch("scaled_exp", np.float32, (1,), (32,), tuple(_good_args()))  # the right ones run


@pytest.mark.parametrize("grid, block, message", [
    ((1,), (1025,), "a block holds at most 1024 threads"),
    ((1,), (32, 32, 2), "a block holds at most 1024 threads"),
    ((0,), (32,), "at least 1"),
    ((1,), (0,), "at least 1"),
    ((1, 65536), (32,), "limits"),
    ((1,), (1, 1, 65), "limits"),
])  # fmt: skip
def test_a_launch_a_gpu_refuses_is_refused_under_the_emulator(
    user_folder, monkeypatch, grid, block, message
):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    module = cuda.load_module(user_folder / "my_op.cu")
    with pytest.raises(ValueError, match=r"scaled_exp \(.*\): cannot launch grid .*" + message):
        module.launch("scaled_exp", np.float32, grid, block, tuple(_good_args()))


# Builds a .cu file (argv[1], including from argv[2]) and runs its kernel.
PARALLEL_BUILD = """\
import sys
import numpy as np
from minidl import emulator
module = emulator.load(sys.argv[1], include_dirs=[sys.argv[2]])
x, y = np.ones(4), np.empty(4)
module.launch("scaled_exp<double>", (1,), (32,), (x, y, np.int64(4), np.float64(2.0)))
assert np.allclose(y, 2 * np.e), y
"""


def test_a_cached_library_without_the_kernels_is_built_again(user_folder, tmp_path, monkeypatch):
    """A library left in the cache without our kernels (compiled from an empty .cpp, as a race
    between parallel builds once made one) is rebuilt, never loaded."""
    from minidl import emulator

    monkeypatch.setenv("MINIDL_CACHE", str(tmp_path / "cache"))
    path = user_folder / "my_op.cu"
    build = [sys.executable, "-c", PARALLEL_BUILD, str(path), str(KERNELS)]
    subprocess.run(
        build, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True
    )  # not loaded here
    (library,) = (tmp_path / "cache" / "emulator").glob("my_op-*.so")
    empty = tmp_path / "empty.cpp"
    empty.write_text("")
    subprocess.run(["g++", *emulator.BUILD_FLAGS, "-o", str(library), str(empty)], check=True)
    module = emulator.load(path, include_dirs=[KERNELS])
    x, y = np.ones(4), np.empty(4)
    module.launch("scaled_exp<double>", (1,), (32,), (x, y, np.int64(4), np.float64(2.0)))
    np.testing.assert_allclose(y, 2 * np.e)


def test_processes_building_the_same_file_at_once_all_get_a_whole_library(user_folder, tmp_path):
    """Test workers and MPI ranks compile a changed .cu at the same moment into one cache."""
    env = {**os.environ, "MINIDL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    for attempt in range(3):  # a fresh file each time, so every attempt is a new build
        path = user_folder / f"my_op_{attempt}.cu"
        path.write_text(SOURCE)
        runs = [
            subprocess.Popen(
                [sys.executable, "-c", PARALLEL_BUILD, str(path), str(KERNELS)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(4)
        ]
        for run in runs:
            output, _ = run.communicate(timeout=300)
            assert run.returncode == 0, output[-2000:]
