"""One ONNX node as the importer's builders see it, and the window arithmetic they share.

A *builder* (``minidl/onnx/layer_nodes.py``, ``minidl/onnx/math_nodes.py``) reads a node's
attributes once, at load time, and returns a ``run(inputs, training)`` closure that computes the
node's outputs with minidl ops (``minidl.functional`` and Tensor methods), so autograd records it
and the tensors' device picks the NumPy or the CUDA branch. A builder that meets an attribute
value minidl cannot honour raises ``Unsupported``; the importer collects those from every node and
reports them together.

ONNX attributes changed over the opsets; the old forms the model zoo's older files use are read
here too (``consumed_inputs`` is ignored everywhere: it was a hint for in-place memory reuse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from minidl import backend


class Unsupported(Exception):
    """A node minidl cannot import (an op type, or an attribute value), with the reason."""


@dataclass
class OnnxNode:
    """What a builder needs of one node: ``name`` (the node's own, or its position), ``op_type``,
    ``attrs`` (attribute values as Python/NumPy values), the default domain's ``opset`` the file
    imports, and ``static``: the values known at load time (initializers and Constant outputs) of
    the inputs that have one, by position."""

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict
    opset: int
    static: dict[int, np.ndarray] = field(default_factory=dict)

    def attr(self, key: str, default=None):
        value = self.attrs.get(key, default)
        return value.decode() if isinstance(value, bytes) else value

    def wants_output(self, i: int) -> bool:
        """Whether output i exists and is named (an optional output may be left out or "")."""
        return i < len(self.outputs) and self.outputs[i] != ""


def runtime_value(node: OnnxNode, inputs: list, i: int, default=None) -> np.ndarray:
    """Input i's value as a NumPy array, for a node that needs it on the host (a shape, a ratio):
    the load-time value where there is one, else the running tensor's, copied from its device;
    ``default`` if the input is absent."""
    if i in node.static:
        return node.static[i]
    if i >= len(inputs) or inputs[i] is None:
        return default
    return backend.to_numpy(inputs[i].data)


# ---- windows (Conv, MaxPool, AveragePool) --------------------------------------------------------
@dataclass
class Window:
    """A 2-D window from a node's attributes. A 1-D node (input (N, C, L)) is lifted to 2-D with
    a height of 1, so one code path serves both: kernel, strides and dilations are (h, w); pads
    are ONNX's order (h_begin, w_begin, h_end, w_end); auto_pad is NOTSET, VALID, SAME_UPPER or
    SAME_LOWER."""

    kernel: tuple[int, int]
    strides: tuple[int, int]
    dilations: tuple[int, int]
    pads: tuple[int, int, int, int]
    auto_pad: str

    def paddings(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an h x w input; SAME_* pads so that the output is
        ceil(size / stride): SAME_UPPER puts the odd pixel at the end, SAME_LOWER at the start."""
        if self.auto_pad == "VALID":
            return 0, 0, 0, 0
        if self.auto_pad == "NOTSET":
            top, left, bottom, right = self.pads
            return top, bottom, left, right
        sides = []
        for size, k, s, d in zip((h, w), self.kernel, self.strides, self.dilations):
            total = max((math.ceil(size / s) - 1) * s + d * (k - 1) + 1 - size, 0)
            small = total // 2
            sides += (
                [small, total - small] if self.auto_pad == "SAME_UPPER" else [total - small, small]
            )
        return tuple(sides)


def window(node: OnnxNode, kernel=None) -> Window:
    """The node's window attributes; ``kernel`` where kernel_shape is not required (Conv's comes
    from the weight when the attribute is absent)."""
    kernel = node.attr("kernel_shape", kernel)
    if kernel is None:
        raise Unsupported("kernel_shape is missing (and no initializer's shape gives it)")
    rank = len(kernel)
    if rank not in (1, 2):
        raise Unsupported(f"{rank}-D windows (kernel_shape {list(kernel)}): minidl has 1-D and 2-D")
    strides = node.attr("strides", [1] * rank)
    dilations = node.attr("dilations", [1] * rank)
    pads = node.attr("pads", [0] * 2 * rank)
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
        raise Unsupported(f"auto_pad={auto_pad!r}")
    if rank == 1:  # (L,) -> (1, L); pads (begin, end) -> (0, begin, 0, end)
        kernel, strides, dilations = [1, *kernel], [1, *strides], [1, *dilations]
        pads = [0, pads[0], 0, pads[1]]
    return Window(tuple(kernel), tuple(strides), tuple(dilations), tuple(pads), auto_pad)


def as_2d(x, op: str, name: str):
    """An (N, C, L) input viewed as (N, C, 1, L); (N, C, H, W) as it is; otherwise a clear error.
    Returns the view and a function that gives a result back the input's rank."""
    if x.ndim == 4:
        return x, lambda y: y
    if x.ndim == 3:
        n, c, length = x.shape
        return x.reshape(n, c, 1, length), lambda y: y.reshape(y.shape[0], y.shape[1], y.shape[3])
    raise ValueError(
        f"{op}: input {name!r} has shape {tuple(x.shape)}; minidl imports 1-D (N, C, L) and "
        "2-D (N, C, H, W) windows"
    )
