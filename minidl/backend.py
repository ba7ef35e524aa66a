"""Devices: where a tensor's array lives, and which array module works on it.

A tensor lives on "cpu" (a NumPy array) or "cuda" (a CuPy array). Ops choose their branch from
the tensor's *device*, never from the array's type: with ``MINIDL_CUDA_EMULATE=1`` a "cuda" tensor
keeps a NumPy array and its ops launch our CUDA kernels under the CPU emulator
(``minidl/emulator.py``). That seam is what lets CI test the GPU branch without a GPU.

This is the one module that imports CuPy (``cupy()``): the kernel loader (``minidl/cuda.py``),
the GEMMs, the TF32 switch and NCCL get it, or a submodule of it, from here.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

DEVICES = ("cpu", "cuda")


def emulating() -> bool:
    """True when ``device="cuda"`` runs on the kernel emulator (``MINIDL_CUDA_EMULATE=1``)."""
    return os.environ.get("MINIDL_CUDA_EMULATE", "") not in ("", "0")


def check_device(device) -> str:
    """Normalize a device name, failing clearly when "cuda" cannot be had."""
    name = str(device)
    if name == "cuda:0":
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if name == "cuda" and not emulating():
        require_gpu()
    return name


def xp(device: str):
    """The array module for a device: NumPy for "cpu" and for emulated "cuda", else CuPy."""
    if device == "cpu" or emulating():
        return np
    return cupy()


def move(array, device: str):
    """Copy an array to a device (no copy when it is already there)."""
    if device == "cpu" or emulating():
        if type(array).__module__.startswith("cupy"):
            return array.get()
        return np.asarray(array)
    return cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


# ---- CuPy and the GPU ----------------------------------------------------------------------------
def cupy(submodule: str = ""):
    """Import CuPy (or ``cupy.<submodule>``, e.g. "cuda.nccl"), or explain what is missing."""
    try:
        import cupy

        return importlib.import_module(f"cupy.{submodule}") if submodule else cupy
    except ImportError as err:
        raise RuntimeError(
            "device='cuda' needs CuPy: pip install 'minidl[cuda13]' (or [cuda12]), "
            "or set MINIDL_CUDA_EMULATE=1 to run the CUDA kernels on the CPU emulator"
        ) from err


def cublas():
    """CuPy's cuBLAS bindings, for the GEMMs we call directly (minidl/gemm.py) and the TF32 math
    mode (minidl/precision.py)."""
    cupy()  # the same error as above when CuPy is missing
    from cupy_backends.cuda.libs import cublas

    return cublas


_gpu_checked = False


def require_gpu() -> None:
    """Fail clearly without CuPy or a GPU; asked once per process (every tensor creation on
    "cuda" calls this)."""
    global _gpu_checked
    if _gpu_checked:
        return
    cp = cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as err:  # CuPy raises its own CUDARuntimeError without a driver
        raise RuntimeError(
            f"device='cuda' needs an NVIDIA GPU and driver ({err}); "
            "set MINIDL_CUDA_EMULATE=1 to run the CUDA kernels on the CPU emulator"
        ) from None
    if count < 1:
        raise RuntimeError("device='cuda': CuPy sees no GPU; MINIDL_CUDA_EMULATE=1 emulates one")
    _gpu_checked = True


def use_gpu(index: int) -> None:
    """Make GPU ``index`` of this node the current device (a data-parallel rank drives GPU
    ``local_rank``), after ``require_gpu``: without a driver, or with fewer GPUs than ranks on
    the node, the error says so instead of CuPy's raw CUDARuntimeError."""
    require_gpu()
    count = cupy().cuda.runtime.getDeviceCount()
    if not 0 <= index < count:
        raise RuntimeError(
            f"device='cuda': GPU {index} was asked for, but this node has {count} GPU(s) "
            f"(0..{count - 1}); run at most {count} rank(s) per node"
        )
    cupy().cuda.Device(index).use()


def gpu_available() -> bool:
    """A real GPU with CuPy (never under the emulator)."""
    if emulating():
        return False
    try:
        require_gpu()
    except RuntimeError:
        return False
    return True
