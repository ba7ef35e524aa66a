"""The emulator's bounds-checked mode (MINIDL_EMU_CHECK=1, minidl/bounds.py): a kernel that reads
or writes outside an array raises an error naming the kernel, the block and thread, the argument
and the index. Without it a far out-of-bounds write killed Python with SIGSEGV."""

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import bounds, cuda

SOURCE = """\
// minidl-types: float
template <typename T>
__global__ void shifted_copy(const T* x, T* y, int n, long long shift) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i + shift] = 2 * x[i];
}

template <typename T>
__global__ void shifted_read(const T* x, T* y, int n, long long shift) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) y[i] = x[i + shift];
}

template <typename T>
__global__ void first_through_shared(const T* x, T* y, int n, long long where) {
    __shared__ T s[64];
    s[threadIdx.x] = threadIdx.x < n ? x[threadIdx.x] : T(0);
    __syncthreads();
    if (threadIdx.x == 3) y[where] = s[0];
}
"""


@pytest.fixture
def module(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    monkeypatch.setenv("MINIDL_EMU_CHECK", "1")
    (tmp_path / "shifts.cu").write_text(SOURCE)
    return cuda.load_module(tmp_path / "shifts.cu")


def run(module, kernel, shift, n=10):
    x = np.arange(n, dtype=np.float32)
    y = np.zeros(n, np.float32)
    module.launch(kernel, np.float32, (1,), (32,), (x, y, np.int32(n), np.int64(shift)))
    return y


@pytest.mark.parametrize(
    "kernel, shift, says",
    [
        ("shifted_copy", 1, "block (0, 0, 0), thread (9, 0, 0) accessed element 10 of argument 1"),
        ("shifted_copy", -1, "thread (0, 0, 0) accessed element -1 of argument 1 (T* y)"),
        ("shifted_copy", 10**8, "thread (0, 0, 0) accessed element 100000000 of argument 1"),
        ("shifted_read", 3, "thread (7, 0, 0) accessed element 10 of argument 0 (const T* x)"),
        ("first_through_shared", -3, "thread (3, 0, 0) accessed element -3 of argument 1"),
    ],
)
def test_an_access_outside_an_array_names_the_thread_the_argument_and_the_index(
    module, kernel, shift, says
):
    with pytest.raises(bounds.OutOfBoundsError) as info:
        run(module, kernel, shift)
    message = str(info.value)
    assert message.startswith(f"{kernel}<float>: "), message
    assert says in message and "which has 10 element(s) (valid: 0..9)" in message, message


def test_after_a_fault_the_next_launches_run_and_write_their_results(module):
    with pytest.raises(bounds.OutOfBoundsError):
        run(module, "first_through_shared", 10**6)  # from a fiber (the kernel has a barrier)
    np.testing.assert_array_equal(run(module, "shifted_copy", 0), 2 * np.arange(10))
    y = run(module, "first_through_shared", 9)
    assert y[9] == 0 and not y[:9].any()


def test_our_kernels_stay_in_bounds(monkeypatch):
    """The ops' GPU branches under the checked emulator give the NumPy path's results."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    monkeypatch.setenv("MINIDL_EMU_CHECK", "1")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 9, 9)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)

    def forward_backward(device):
        xt = mdl.tensor(x, requires_grad=True, device=device)
        wt = mdl.tensor(w, requires_grad=True, device=device)
        y = F.conv2d(xt, wt, stride=2, padding=1)
        y = F.max_pool2d(F.local_response_norm(F.relu(y), 3), 2, 1)
        F.cross_entropy(F.flatten(y), np.array([1, 0])).backward()
        return [t.numpy() for t in (y, xt.grad, wt.grad)]

    for ours, reference in zip(forward_backward("cuda"), forward_backward("cpu")):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)
