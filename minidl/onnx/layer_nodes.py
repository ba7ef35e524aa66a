"""Builders for ONNX's layer ops: Conv, MaxPool, AveragePool, GlobalAveragePool, LRN,
BatchNormalization and Dropout (``minidl/onnx/node.py`` says what a builder is).

Each one converts ONNX's conventions to minidl's where they differ (docs/onnx.md has the table):

- LRN: ONNX (and Caffe) divide alpha by ``size``, the paper and ``F.local_response_norm`` do not,
  so ONNX's alpha becomes ``alpha / size`` here.
- BatchNormalization: ONNX's ``momentum`` weighs the old running value (0.9 by default), PyTorch's
  and ours weigh the new batch: ours is ``1 - momentum``.
- MaxPool's second output ``Indices`` is flat over the whole (N, C, H, W) tensor, where
  ``F.max_pool2d`` gives the index inside each (H, W) plane.
- Pads may differ before and after an axis; ``auto_pad`` SAME_UPPER / SAME_LOWER put the odd
  pixel at the end / the start. minidl's ops take symmetric padding, so an asymmetric one is
  made explicit with ``pad`` first (zeros for Conv and AveragePool, -inf for MaxPool).
"""

from __future__ import annotations

import numpy as np

import minidl.functional as F
from minidl import backend
from minidl.onnx.array_ops import pad
from minidl.onnx.node import OnnxNode, Unsupported, as_2d, runtime_value, window
from minidl.ops.dropout import dropout_mask_numpy
from minidl.ops.pool import lowest
from minidl.ops.window import output_size
from minidl.random import next_key
from minidl.tensor import Tensor


def conv(node: OnnxNode):
    """Conv: Y = conv(X, W) + B with groups, strides, dilations and any padding (1-D or 2-D)."""
    group = node.attr("group", 1)
    weight = node.static.get(1)  # kernel_shape is optional: an initializer's shape gives it
    spec = window(node, kernel=None if weight is None else list(weight.shape[2:]))

    def run(inputs, training):
        x, w, b = (inputs + [None])[:3]
        x, back = as_2d(x, "Conv", node.inputs[0])
        if w.ndim == 3:  # a 1-D kernel (O, C/G, K) -> (O, C/G, 1, K)
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
        top, bottom, left, right = spec.paddings(*x.shape[2:])
        if (top, left) != (bottom, right):  # asymmetric: zeros first, then no padding
            x = pad(x, [(top, bottom), (left, right)])
            top = left = 0
        y = F.conv2d(x, w, b, spec.strides, (top, left), spec.dilations, group)
        return back(y)

    return run


def _flat_indices(argmax: Tensor, x_shape, padded_width: int, top: int, left: int, order: int):
    """F.max_pool2d's argmax (h * W + w in a padded plane) as ONNX's Indices: flat over the whole
    (N, C, H, W) input, row-major (storage_order 0) or with H and W swapped (storage_order 1).
    Indices carry no gradient: plain integer array math on the tensors' own device."""
    xp = backend.xp(argmax.device)
    n, c, h, w = x_shape
    row = argmax.data // padded_width - top
    col = argmax.data % padded_width - left
    inside = row * w + col if order == 0 else col * h + row
    plane = xp.arange(n * c, dtype=np.int64).reshape(n, c, 1, 1)
    return Tensor._wrap((plane * (h * w) + inside).astype(np.int64), argmax.device, False)


def max_pool(node: OnnxNode):
    """MaxPool: the maximum of each window; pads never win (they hold -inf). Optional Indices."""
    spec = window(node)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    order = node.attr("storage_order", 0)

    def run(inputs, training):
        x, back = as_2d(inputs[0], "MaxPool", node.inputs[0])
        h, w = x.shape[2:]
        top, bottom, left, right = spec.paddings(h, w)
        kh, kw = spec.kernel
        symmetric = (top, left) == (bottom, right) and top <= kh // 2 and left <= kw // 2
        if symmetric:
            y, argmax = F.max_pool2d(
                x, spec.kernel, spec.strides, (top, left), spec.dilations, ceil_mode, True
            )
            padded_width, top, left = w, 0, 0  # argmax is already in the unpadded plane
        else:  # -inf around, enough at the end for the windows ceil_mode adds, then no padding
            pads = (top, bottom, left, right)
            bottom_all, right_all = _ceil_padding(spec, h, w, pads, ceil_mode)
            padded = pad(x, [(top, bottom_all), (left, right_all)], lowest(x.dtype))
            y, argmax = F.max_pool2d(
                padded, spec.kernel, spec.strides, 0, spec.dilations, False, True
            )
            padded_width = padded.shape[3]
        if not node.wants_output(1):
            return [back(y)]
        indices = _flat_indices(argmax, x.shape, padded_width, top, left, order)
        return [back(y), back(indices)]

    return run


def _ones(shape, like: Tensor) -> Tensor:
    """A constant tensor of ones on ``like``'s device and dtype."""
    return Tensor._wrap(backend.xp(like.device).ones(shape, like.dtype), like.device, False)


def average_pool(node: OnnxNode):
    """AveragePool: the mean of each window, as a depthwise convolution with a kernel of ones,
    divided by the count of cells each window covers, counted by the same convolution over a
    mask of ones: the input's cells (count_include_pad=0, the default) or the input's and its
    pads' (count_include_pad=1). Windows that ceil_mode adds past the pads count neither."""
    spec = window(node)
    ceil_mode = bool(node.attr("ceil_mode", 0))
    include_pad = bool(node.attr("count_include_pad", 0))

    def run(inputs, training):
        x, back = as_2d(inputs[0], "AveragePool", node.inputs[0])
        n, c, h, w = x.shape
        top, bottom, left, right = spec.paddings(h, w)
        bottom_all, right_all = _ceil_padding(spec, h, w, (top, bottom, left, right), ceil_mode)
        ones = _ones((c, 1, *spec.kernel), x)  # one depthwise kernel of ones per channel
        padded = pad(x, [(top, bottom_all), (left, right_all)])
        total = F.conv2d(padded, ones, None, spec.strides, 0, spec.dilations, groups=c)
        if include_pad:  # the pads count, the cells ceil_mode adds do not
            inside = _ones((1, c, h + top + bottom, w + left + right), x)
            mask = pad(inside, [(0, bottom_all - bottom), (0, right_all - right)])
        else:
            mask = pad(_ones((1, c, h, w), x), [(top, bottom_all), (left, right_all)])
        count = F.conv2d(mask, ones, None, spec.strides, 0, spec.dilations, groups=c)
        return back(total / count)

    return run


def _ceil_padding(spec, h: int, w: int, pads, ceil_mode: bool) -> tuple[int, int]:
    """The bottom and right padding that gives exactly the windows ONNX counts (output_size, with
    ceil_mode's extra window where it starts inside the input or its first pad)."""
    top, bottom, left, right = pads
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.strides, spec.dilations
    oh = output_size(h, kh, sh, dh, top, bottom, ceil_mode)
    ow = output_size(w, kw, sw, dw, left, right, ceil_mode)
    extra_h = max((oh - 1) * sh + dh * (kh - 1) + 1 - (h + top + bottom), 0)
    extra_w = max((ow - 1) * sw + dw * (kw - 1) + 1 - (w + left + right), 0)
    return bottom + extra_h, right + extra_w


def global_average_pool(node: OnnxNode):
    """GlobalAveragePool: the mean over every axis after N and C, kept as size-1 axes."""

    def run(inputs, training):
        x = inputs[0]
        return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True)

    return run


def lrn(node: OnnxNode):
    """LRN: ONNX's alpha is divided by size in its formula; the paper's (ours) is not."""
    size = node.attr("size")
    alpha, beta, bias = node.attr("alpha", 1e-4), node.attr("beta", 0.75), node.attr("bias", 1.0)
    if size is None or size % 2 == 0:
        raise Unsupported(f"size={size}: the paper's LRN (and minidl's) has an odd window")

    def run(inputs, training):
        return F.local_response_norm(inputs[0], size=size, alpha=alpha / size, beta=beta, k=bias)

    return run


def batch_normalization(node: OnnxNode):
    """BatchNormalization with running statistics; in a model put in ``train()`` mode it learns
    as ``nn.BatchNorm2d`` does. ``training_mode=1`` (opset 14) normalizes with the batch's biased
    variance and also returns the new running mean and variance in ONNX's convention."""
    if node.attr("spatial", 1) != 1:
        raise Unsupported("spatial=0 (statistics per activation, not per channel)")
    eps, momentum = node.attr("epsilon", 1e-5), node.attr("momentum", 0.9)
    if node.attr("training_mode", 0):
        return _batch_normalization_training(eps, momentum)
    if node.wants_output(1) and node.opset >= 14:
        raise Unsupported("running statistics as outputs without training_mode=1")
    # opset < 7 names the statistics of a training run (mean, var, saved_mean, saved_var) as
    # extra outputs; an inference file leaves them unused and only Y is produced here

    def run(inputs, training):
        x, scale, b, mean, var = inputs[:5]
        return F.batch_norm(x, mean, var, scale, b, training, momentum=1.0 - momentum, eps=eps)

    return run


def _batch_normalization_training(eps: float, momentum: float):
    def run(inputs, training):
        x, scale, b, mean, var = inputs[:5]
        axes = (0, *range(2, x.ndim))
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        batch_mean = x.mean(axis=axes)
        centered = x - batch_mean.reshape(*shape)
        batch_var = (centered * centered).mean(axis=axes)  # biased, as ONNX's running_var
        y = centered / (batch_var.reshape(*shape) + eps) ** 0.5
        y = y * scale.reshape(*shape) + b.reshape(*shape)
        running_mean = mean * momentum + batch_mean * (1.0 - momentum)
        running_var = var * momentum + batch_var * (1.0 - momentum)
        return [y, running_mean, running_var]

    return run


def dropout(node: OnnxNode):
    """Dropout: identity at inference (ONNX's and minidl's dropout are both inverted); in a model
    put in ``train()`` mode (or with the training_mode input true) it drops with our generator,
    so the draws differ from another engine's. The optional mask output is True where kept."""
    ratio = node.attr("ratio", 0.5)  # an attribute before opset 12, an input from 12 on

    def run(inputs, training):
        x = inputs[0]
        p = float(runtime_value(node, inputs, 1, ratio)) if node.opset >= 12 else ratio
        train_always = node.opset >= 12 and bool(runtime_value(node, inputs, 2, False))
        # (before opset 7, is_test=0 marked a training graph: it is imported for inference too)
        active = (training or train_always) and p > 0
        keep = None if active else backend.xp(x.device).ones(x.shape, dtype=bool)
        if active and node.wants_output(1):
            keep = dropout_mask_numpy(next_key(), x.shape, p)  # ours, to return it too
        y = F.dropout(x, p, training=active, mask=keep if active else None)
        if not node.wants_output(1):
            return [y]
        return [y, Tensor._wrap(backend.move(keep.astype(bool), x.device), x.device, False)]

    return run


LAYER_BUILDERS = {
    "Conv": conv,
    "MaxPool": max_pool,
    "AveragePool": average_pool,
    "GlobalAveragePool": global_average_pool,
    "LRN": lrn,
    "BatchNormalization": batch_normalization,
    "Dropout": dropout,
}
