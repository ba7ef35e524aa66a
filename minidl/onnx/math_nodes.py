"""Builders for ONNX's math and shape ops: Gemm, MatMul, Add/Sub/Mul/Div, Sum, Relu, Softmax,
LogSoftmax, SoftmaxCrossEntropyLoss, Flatten, Reshape, Transpose, Concat, Identity, Abs, Sqrt,
Sigmoid, Tanh, Clip, Expand
(``minidl/onnx/node.py`` says what a builder is).

Conventions that changed over the opsets and are read here:

- Add/Sub/Mul/Div before opset 7 broadcast only with ``broadcast=1``, B lined up with A from
  ``axis`` (a bias of shape (C,) added at axis 1 of (N, C, H, W)); from opset 7 on, NumPy's rules.
- Softmax and LogSoftmax before opset 13 flatten the input to 2-D at ``axis`` (default 1) and
  normalize each row of that matrix; from opset 13 on, along the one ``axis`` (default -1).
- Reshape takes its shape as an attribute before opset 5, as an input after; a 0 copies the
  input's size there (unless ``allowzero=1``), a -1 is inferred.
"""

from __future__ import annotations

import math

import numpy as np

import minidl.functional as F
from minidl import backend
from minidl.onnx.node import OnnxNode, Unsupported, runtime_value
from minidl.tensor import Tensor
from minidl.tensor_api import cat


def gemm(node: OnnxNode):
    """Gemm: Y = alpha * A' @ B' + beta * C, A' = A.T if transA, B' = B.T if transB."""
    alpha, beta = node.attr("alpha", 1.0), node.attr("beta", 1.0)
    trans_a, trans_b = node.attr("transA", 0), node.attr("transB", 0)

    def run(inputs, training):
        a, b, c = (inputs + [None])[:3]
        a = a.T if trans_a else a
        # a Linear layer is B = its (out, in) weight with transB=1 and C = its bias: F.linear
        linear_bias = c is not None and c.shape == (b.shape[0],) and alpha == beta == 1.0
        if trans_b and linear_bias:
            return F.linear(a, b, c)
        y = F.linear(a, b) if trans_b else a @ b
        if alpha != 1.0:
            y = y * alpha
        if c is None or beta == 0.0:
            return y
        return y + (c if beta == 1.0 else c * beta)

    return run


def _legacy_broadcast(node: OnnxNode):
    """Before opset 7, B broadcasts only with broadcast=1, lined up with A from ``axis``: reshape
    B so that NumPy's rules (right-aligned) do the same."""
    if node.opset >= 7 or not node.attr("broadcast", 0) or "axis" not in node.attrs:
        return lambda a, b: b
    axis = node.attr("axis")

    def line_up(a, b):
        start = axis % a.ndim
        return b.reshape(*b.shape, *([1] * (a.ndim - start - b.ndim)))

    return line_up


def binary(node: OnnxNode):
    """Add, Sub, Mul, Div: element-wise with broadcasting."""
    line_up = _legacy_broadcast(node)
    op = {
        "Add": lambda a, b: a + b,
        "Sub": lambda a, b: a - b,
        "Mul": lambda a, b: a * b,
        "Div": lambda a, b: a / b,
    }[node.op_type]

    def run(inputs, training):
        a, b = inputs
        return op(a, line_up(a, b))

    return run


def matmul(node: OnnxNode):
    return lambda inputs, training: inputs[0] @ inputs[1]


def sum_(node: OnnxNode):
    """Sum: the element-wise sum of any number of inputs."""

    def run(inputs, training):
        total = inputs[0]
        for x in inputs[1:]:
            total = total + x
        return total

    return run


def relu(node: OnnxNode):
    return lambda inputs, training: F.relu(inputs[0])


def identity(node: OnnxNode):
    return lambda inputs, training: inputs[0]


def softmax(node: OnnxNode):
    """Softmax / LogSoftmax over ``axis`` (opset >= 13), or over the rows of the input flattened
    to 2-D at ``axis`` (before opset 13: the same thing when axis is the last one)."""
    normalize = F.log_softmax if node.op_type == "LogSoftmax" else F.softmax
    axis = node.attr("axis", -1 if node.opset >= 13 else 1)

    def run(inputs, training):
        x = inputs[0]
        if node.opset >= 13:
            return normalize(x, dim=axis)
        start = axis % x.ndim
        rows = math.prod(x.shape[:start])
        return normalize(x.reshape(rows, x.numel() // max(rows, 1)), dim=1).reshape(*x.shape)

    return run


def softmax_cross_entropy(node: OnnxNode):
    """SoftmaxCrossEntropyLoss: -log_softmax(scores)[label] per sample (and per position for
    (N, C, d1, ...) scores), weighted by ``weights[label]``; labels equal to ``ignore_index``
    count for nothing. reduction "mean" divides by the total weight of the counted labels."""
    reduction = node.attr("reduction", "mean")
    ignore_index = node.attr("ignore_index", None)
    if reduction not in ("none", "sum", "mean"):
        raise Unsupported(f"reduction={reduction!r}")

    def run(inputs, training):
        scores, labels, weights = (inputs + [None])[:3]
        log_prob = F.log_softmax(scores, dim=1)
        target = _target_weights(scores, labels, weights, ignore_index)  # (N, C, d1, ...)
        loss = -(log_prob * target).sum(axis=1)
        if reduction == "sum":
            loss = loss.sum()
        elif reduction == "mean":
            loss = loss.sum() / float(target.data.sum())
        return [loss, log_prob] if node.wants_output(1) else [loss]

    return run


def _target_weights(scores: Tensor, labels: Tensor, weights, ignore_index) -> Tensor:
    """One-hot labels times each label's weight, 0 where the label is ignore_index: a constant
    (no gradient flows into labels or weights), built with the scores' array module."""
    xp = backend.xp(scores.device)
    classes = scores.shape[1]
    label = labels.data.astype(np.int64)
    counted = xp.ones(label.shape, dtype=bool) if ignore_index is None else label != ignore_index
    label = xp.where(counted, label, 0)  # an ignored label may lie outside 0..C-1
    weight = xp.ones(label.shape, scores.dtype) if weights is None else weights.data[label]
    weight = weight * counted
    shape = (1, classes) + (1,) * (label.ndim - 1)
    one_hot = xp.expand_dims(label, 1) == xp.arange(classes).reshape(shape)
    target = one_hot * xp.expand_dims(weight, 1)
    return Tensor._wrap(target.astype(scores.dtype), scores.device, False)


def flatten(node: OnnxNode):
    """Flatten: (d_0, ..., d_n) -> (d_0 * ... * d_{axis-1}, d_axis * ... * d_n)."""
    axis = node.attr("axis", 1)

    def run(inputs, training):
        x = inputs[0]
        start = axis % x.ndim if axis < 0 else axis
        rows = math.prod(x.shape[:start])
        return x.reshape(rows, math.prod(x.shape[start:]))

    return run


def reshape(node: OnnxNode):
    """Reshape (opset < 5: the shape is an attribute; then an input)."""
    allow_zero = node.attr("allowzero", 0)

    def run(inputs, training):
        x = inputs[0]
        if node.opset < 5:
            target = node.attr("shape")
        else:
            target = [int(d) for d in runtime_value(node, inputs, 1)]
        shape = [x.shape[i] if d == 0 and not allow_zero else d for i, d in enumerate(target)]
        return x.reshape(*shape)

    return run


def _axes(node: OnnxNode, inputs: list) -> list[int] | None:
    """Squeeze's and Unsqueeze's axes: an attribute before opset 13, an input from 13 on."""
    if node.opset < 13:
        return node.attr("axes")
    axes = runtime_value(node, inputs, 1)
    return None if axes is None else [int(a) for a in axes]


def unsqueeze(node: OnnxNode):
    """Unsqueeze: insert size-1 axes at ``axes`` (positions in the output)."""

    def run(inputs, training):
        x = inputs[0]
        rank = x.ndim + len(_axes(node, inputs))
        sizes = iter(x.shape)
        inserted = {a % rank for a in _axes(node, inputs)}
        shape = [1 if d in inserted else next(sizes) for d in range(rank)]
        return x.reshape(*shape)

    return run


def squeeze(node: OnnxNode):
    """Squeeze: drop the size-1 axes listed in ``axes`` (all of them if none are listed)."""

    def run(inputs, training):
        x = inputs[0]
        axes = _axes(node, inputs)
        dropped = (
            {a % x.ndim for a in axes} if axes else {d for d, n in enumerate(x.shape) if n == 1}
        )
        return x.reshape(*[n for d, n in enumerate(x.shape) if d not in dropped])

    return run


def transpose(node: OnnxNode):
    perm = node.attr("perm")

    def run(inputs, training):
        x = inputs[0]
        return x.permute(*(perm if perm is not None else reversed(range(x.ndim))))

    return run


def unary(node: OnnxNode):
    """Abs, Sqrt, Sigmoid, Tanh: the Tensor method of the same name."""
    method = node.op_type.lower()
    return lambda inputs, training: getattr(inputs[0], method)()


def clip(node: OnnxNode):
    """Clip: the bounds are attributes before opset 11 (absent: the dtype's lowest and highest),
    optional inputs from 11 on (absent or empty: no bound). min > max gives max everywhere, as
    numpy.clip and torch.clamp do."""

    def run(inputs, training):
        if node.opset < 11:
            low, high = node.attr("min"), node.attr("max")
        else:
            low, high = runtime_value(node, inputs, 1), runtime_value(node, inputs, 2)
        low, high = (None if v is None else np.asarray(v).item() for v in (low, high))
        if low is None and high is None:
            return inputs[0] * 1  # a copy: Clip's output is its own tensor
        return inputs[0].clamp(min=low, max=high)

    return run


def expand(node: OnnxNode):
    """Expand: x broadcast against the shape input both ways (ONNX's rule: a 1 in the shape
    keeps x's size there), as a view."""

    def run(inputs, training):
        x, shape = inputs[0], [int(d) for d in runtime_value(node, inputs, 1)]
        return x.expand(*np.broadcast_shapes(tuple(x.shape), tuple(shape)))

    return run


def concat_(node: OnnxNode):
    axis = node.attr("axis", 1)  # required from opset 4; before, 1 by default

    def run(inputs, training):
        return cat([x for x in inputs if x is not None], axis)

    return run


MATH_BUILDERS = {
    "Gemm": gemm,
    "MatMul": matmul,
    "Add": binary,
    "Sub": binary,
    "Mul": binary,
    "Div": binary,
    "Sum": sum_,
    "Relu": relu,
    "Identity": identity,
    "Softmax": softmax,
    "LogSoftmax": softmax,
    "SoftmaxCrossEntropyLoss": softmax_cross_entropy,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": unsqueeze,
    "Concat": concat_,
    "Abs": unary,
    "Sqrt": unary,
    "Sigmoid": unary,
    "Tanh": unary,
    "Clip": clip,
    "Expand": expand,
}
