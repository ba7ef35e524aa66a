"""Where minidl and ONNX write the same thing differently: one function per convention, each way.

docs/onnx.md sets them side by side in a table (the paper, Caffe/ONNX, PyTorch, minidl);
tests/test_onnx_export.py checks each one against onnxruntime rather than trusting this page.

- LRN: the paper (and minidl) add ``alpha * sum(a^2)``; Caffe and ONNX add ``alpha / size *
  sum(a^2)``. So ONNX's alpha is ours times size. The constant k is ONNX's ``bias``.
- BatchNorm: PyTorch and minidl update ``running = (1 - momentum) * running + momentum * batch``;
  ONNX writes ``running * momentum + batch * (1 - momentum)``. So ONNX's momentum is 1 - ours
  (our 0.1 is ONNX's default 0.9). Inference only reads the running mean and variance (minidl
  keeps the unbiased variance there, as PyTorch does, and divides by sqrt(var + eps) in eval:
  the same arithmetic ONNX's inference does with the variance it is given).
- Pads: minidl (and F.pad) say (top, bottom, left, right); ONNX lists every axis's start, then
  every axis's end: [top, left, bottom, right].
- MaxPool's indices: minidl and PyTorch count within each (H, W) plane, ``h * W + w``; ONNX
  counts over the whole (N, C, H, W) tensor, ``((n * C + c) * H + h) * W + w``.
"""

from __future__ import annotations

import math


def lrn_alpha_to_onnx(alpha: float, size: int) -> float:
    """minidl's (the paper's) alpha -> ONNX's, which ONNX divides by size again."""
    return alpha * size


def lrn_alpha_from_onnx(alpha: float, size: int) -> float:
    return alpha / size


def batch_norm_momentum_to_onnx(momentum: float) -> float:
    """minidl's (PyTorch's) momentum, the weight of the new batch -> ONNX's, the weight of the
    running value."""
    return 1.0 - momentum


def batch_norm_momentum_from_onnx(momentum: float) -> float:
    return 1.0 - momentum


def pads_to_onnx(top: int, bottom: int, left: int, right: int) -> list[int]:
    """(top, bottom, left, right) -> ONNX's [x1_begin, x2_begin, x1_end, x2_end]."""
    return [top, left, bottom, right]


def pads_from_onnx(pads) -> tuple[int, int, int, int]:
    """ONNX's [top, left, bottom, right] -> minidl's (top, bottom, left, right)."""
    top, left, bottom, right = (int(p) for p in pads)
    return top, bottom, left, right


def auto_pads(size: int, kernel: int, stride: int, dilation: int, auto_pad: str) -> tuple[int, int]:
    """(before, after) padding of one axis for ONNX's ``auto_pad``: the output is ceil(size /
    stride) long, and an odd total goes after (SAME_UPPER, TensorFlow's "same", and minidl's and
    PyTorch's padding="same") or before (SAME_LOWER)."""
    out = math.ceil(size / stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small, large = total // 2, total - total // 2
    if auto_pad == "SAME_UPPER":
        return small, large
    if auto_pad == "SAME_LOWER":
        return large, small
    raise ValueError(f"auto_pads: auto_pad must be SAME_UPPER or SAME_LOWER, got {auto_pad!r}")


def plane_indices(onnx_indices, height: int, width: int):
    """ONNX MaxPool's Indices (flat over the whole tensor) -> minidl's (flat in each plane)."""
    return onnx_indices % (height * width)
