"""Devices: where a tensor's array lives, and which array module works on it.

A tensor lives on "cpu" (a NumPy array) or "cuda" (a CuPy array). Ops choose their branch from
the tensor's *device*, never from the array's type: with ``MINIDL_CUDA_EMULATE=1`` a "cuda" tensor
keeps a NumPy array and its ops launch our CUDA kernels under the CPU emulator
(``minidl/emulator.py``). That seam is what lets CI test the GPU branch without a GPU.
"""

from __future__ import annotations

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
        from minidl import cuda

        cuda.require_gpu()
    return name


def xp(device: str):
    """The array module for a device: NumPy for "cpu" and for emulated "cuda", else CuPy."""
    if device == "cpu" or emulating():
        return np
    from minidl import cuda

    return cuda.cupy()


def move(array, device: str):
    """Copy an array to a device (no copy when it is already there)."""
    if device == "cpu" or emulating():
        if type(array).__module__.startswith("cupy"):
            return array.get()
        return np.asarray(array)
    from minidl import cuda

    return cuda.cupy().asarray(array)


def to_numpy(array) -> np.ndarray:
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)
