import numpy as np
import pytest

from minidl import backend


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU and CuPy (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


@pytest.fixture(autouse=True)
def _no_emulation_by_default(monkeypatch):
    """Each test starts on the real devices; kernel tests opt into the emulator explicitly."""
    monkeypatch.delenv("MINIDL_CUDA_EMULATE", raising=False)


@pytest.fixture(params=["emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def kernel_device(request, monkeypatch):
    """device="cuda" under the kernel emulator, and on a real GPU where there is one."""
    if request.param == "emulated":
        monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    elif not backend.gpu_available():
        pytest.skip("no NVIDIA GPU with CuPy on this machine")
    return "cuda"


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param
