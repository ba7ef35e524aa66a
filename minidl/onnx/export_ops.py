"""How each minidl op is written in ONNX: one small function per op, ``TRANSLATIONS`` by op.

Each function gets the builder (``minidl/onnx/graph.py``) and one recorded ``Call``
(``minidl/onnx/tracing.py``): the op, its arguments and its attributes exactly as the forward
passed them. Where the two conventions differ, the conversion is ``minidl/onnx/conventions.py``'s.

    minidl op                         ONNX (opset 13 and later)
    conv2d                            Conv (pads [top, left, bottom, right], group, dilations)
    max_pool2d                        MaxPool (ceil_mode, dilations)
    local_response_norm               LRN (alpha * size, bias = k)
    batch_norm (eval)                 BatchNormalization (momentum 1 - ours)
    linear                            Gemm (transB = 1); MatMul + Add above 2-D
    relu, bias_relu                   Relu; Reshape + Add + Relu
    dropout (only a forced one)       Dropout (ratio as an input; identity at inference)
    softmax, log_softmax              Softmax, LogSoftmax (axis)
    + - * / ** neg exp log @          Add Sub Mul Div Pow Neg Exp Log MatMul
    abs sqrt sigmoid tanh clamp       Abs Sqrt Sigmoid Tanh Clip
    sum, max, min                     ReduceSum, ReduceMax, ReduceMin
    reshape/view/flatten, permute/T   Reshape, Transpose
    x[ints, slices]                   Gather (an int), Slice (a slice)
    cat, stack, expand                Concat; Unsqueeze each + Concat; Expand
    astype, to(device), clone         Cast, Identity, Identity
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import helper

from minidl.onnx import conventions
from minidl.onnx.graph import ExportError
from minidl.ops import pointwise, shape_ops, tensor_ops
from minidl.ops.activation import BiasReLUFunction, ReLUFunction
from minidl.ops.batchnorm import BatchNormFunction
from minidl.ops.conv import Conv2dFunction
from minidl.ops.dropout import DropoutFunction
from minidl.ops.linear import LinearFunction
from minidl.ops.lrn import LocalResponseNormFunction
from minidl.ops.pool import MaxPool2dFunction
from minidl.ops.softmax import LogSoftmaxFunction, SoftmaxFunction
from minidl.ops.window import Window2d

if TYPE_CHECKING:
    from minidl.onnx.graph import GraphBuilder
    from minidl.onnx.tracing import Call


# ---- layers --------------------------------------------------------------------------------------
def conv2d(g: GraphBuilder, call: Call) -> None:
    # x: (N, C, H, W), w: (O, C/G, kh, kw), b: (O,) or None -> (N, O, OH, OW)
    x, w, b = call.args
    p = call.params
    g.node(
        "Conv",
        [g.input(x), g.input(w), g.input(b)],
        call.output,
        kernel_shape=list(w.shape[2:]),
        strides=list(p["stride"]),
        pads=conventions.pads_to_onnx(*p["padding"]),  # minidl: (top, bottom, left, right)
        dilations=list(p["dilation"]),
        group=p["groups"],
    )


def max_pool2d(g: GraphBuilder, call: Call) -> None:
    (x,) = call.args
    p = call.params
    if p.get("indices") is not None:
        raise ExportError(
            "max_pool2d with its indices (return_indices=True, or an unbatched (C, H, W) input, "
            "which max_pool2d pools through the indices path): the indices tensor is made after "
            "the op, where the exporter cannot follow it; give the layer a batched input without "
            "return_indices"
        )
    pads, ceil_mode = _pool_pads(x.shape[2:], p, call.output.shape[2:])
    g.node(
        "MaxPool",
        [g.input(x)],
        call.output,
        kernel_shape=list(p["kernel_size"]),
        strides=list(p["stride"]),
        pads=conventions.pads_to_onnx(*pads),
        dilations=list(p["dilation"]),
        ceil_mode=ceil_mode,
    )


def _pool_pads(size, p, out_size) -> tuple[tuple[int, int, int, int], int]:
    """(top, bottom, left, right) pads and ceil_mode for ONNX's MaxPool.

    ceil_mode: minidl and PyTorch (and Caffe, and onnxruntime) drop a last window that would
    start in the bottom/right padding; onnx's shape inference for MaxPool before opset 22 keeps
    it, so the checker would refuse the output shape the file declares. Where the two counts
    differ the pool is written in floor mode with the end padding the kept windows reach: the
    same windows, so the same maxima (a padded cell never wins)."""
    (h, w), (ph, pw) = size, p["padding"]
    pads = (ph, ph, pw, pw)
    if not p["ceil_mode"]:
        return pads, 0
    window = Window2d.over(h, w, p["kernel_size"], p["stride"], pads, p["dilation"], True)
    onnx_h, onnx_w = (
        -(-(n + 2 * pad - d * (k - 1) - 1) // s) + 1  # ceil((n + pads - reach) / s) + 1
        for n, pad, k, s, d in zip(size, (ph, pw), p["kernel_size"], p["stride"], p["dilation"])
    )
    if (onnx_h, onnx_w) == tuple(out_size):
        return pads, 1
    bottom, right = window.padding_after(h, w)
    return (ph, bottom, pw, right), 0


def local_response_norm(g: GraphBuilder, call: Call) -> None:
    (x,) = call.args
    p = call.params
    g.node(
        "LRN",
        [g.input(x)],
        call.output,
        size=p["size"],
        alpha=conventions.lrn_alpha_to_onnx(p["alpha"], p["size"]),  # ONNX divides by size
        beta=p["beta"],
        bias=p["k"],
    )


def batch_norm(g: GraphBuilder, call: Call) -> None:
    x, weight, bias, running_mean, running_var = call.args
    p = call.params
    if p["training"]:
        raise ExportError(
            "batch_norm with the batch's own statistics (training=True: a BatchNorm layer with "
            "track_running_stats=False, or F.batch_norm(training=True)): ONNX inference "
            "normalizes with fixed running statistics; track them, or call F.batch_norm with "
            "training=False"
        )
    channels = x.shape[1]
    scale = g.input(weight) if weight is not None else g.constant(np.ones(channels, x.dtype), "one")
    shift = g.input(bias) if bias is not None else g.constant(np.zeros(channels, x.dtype), "zero")
    g.node(
        "BatchNormalization",
        [g.input(x), scale, shift, g.input(running_mean), g.input(running_var)],
        call.output,
        epsilon=p["eps"],
        momentum=conventions.batch_norm_momentum_to_onnx(p["momentum"]),  # read in training only
    )


def linear(g: GraphBuilder, call: Call) -> None:
    # x: (N, in) -> Gemm; x: (in,) or (N, ..., in) -> MatMul with w^T, then Add b
    x, w, b = call.args
    if x.ndim == 2:
        g.node("Gemm", [g.input(x), g.input(w), g.input(b)], call.output, transB=1)
        return
    wt = g.node("Transpose", [g.input(w)], perm=[1, 0])
    if b is None:
        g.node("MatMul", [g.input(x), wt], call.output)
        return
    product = g.node("MatMul", [g.input(x), wt])
    g.node("Add", [product, g.input(b)], call.output)


def relu(g: GraphBuilder, call: Call) -> None:
    g.node("Relu", [g.input(call.args[0])], call.output)


def bias_relu(g: GraphBuilder, call: Call) -> None:
    # x: (N, C, ...), b: (C,) -> relu(x + b as (C, 1, ..., 1))
    x, b = call.args
    per_channel = g.input(b)
    if x.ndim > 2:
        shape = g.int64s([b.shape[0]] + [1] * (x.ndim - 2), "shape")
        per_channel = g.node("Reshape", [per_channel, shape])
    g.node("Relu", [g.node("Add", [g.input(x), per_channel])], call.output)


def dropout(g: GraphBuilder, call: Call) -> None:
    """Only a dropout that ran although the model was in eval (``F.dropout(x, training=True)``
    in a forward) is recorded; a Dropout node is the identity at inference."""
    ratio = g.constant(np.asarray(call.params["p"], np.float32), "ratio")
    g.node("Dropout", [g.input(call.args[0]), ratio], call.output)


def softmax(g: GraphBuilder, call: Call) -> None:
    op_type = "LogSoftmax" if call.fn is LogSoftmaxFunction else "Softmax"
    g.node(op_type, [g.input(call.args[0])], call.output, axis=call.params["dim"])


# ---- the Tensor's own ops ------------------------------------------------------------------------
ELEMENTWISE = {
    tensor_ops.Add: "Add",
    tensor_ops.Sub: "Sub",
    tensor_ops.Mul: "Mul",
    tensor_ops.Div: "Div",
    tensor_ops.Pow: "Pow",
    tensor_ops.MatMul: "MatMul",
    tensor_ops.Neg: "Neg",
    tensor_ops.Exp: "Exp",
    tensor_ops.Log: "Log",
    tensor_ops.ToDevice: "Identity",  # one device in a file
    tensor_ops.Clone: "Identity",
    pointwise.Abs: "Abs",
    pointwise.Sqrt: "Sqrt",
    pointwise.Sigmoid: "Sigmoid",
    pointwise.Tanh: "Tanh",
}


def elementwise(g: GraphBuilder, call: Call) -> None:
    g.node(ELEMENTWISE[call.fn], [g.input(a) for a in call.args], call.output)


def cast(g: GraphBuilder, call: Call) -> None:
    to = helper.np_dtype_to_tensor_dtype(np.dtype(call.params["dtype"]))
    g.node("Cast", [g.input(call.args[0])], call.output, to=to)


def clamp(g: GraphBuilder, call: Call) -> None:
    # min and max: optional inputs (scalars of x's dtype); "" for a bound clamp was not given
    (x,) = call.args
    bounds = {"min": call.params["low"], "max": call.params["high"]}
    limits = [
        "" if v is None else g.constant(np.array(v, x.dtype), name) for name, v in bounds.items()
    ]
    g.node("Clip", [g.input(x), *limits], call.output)


REDUCTIONS = {tensor_ops.Sum: "ReduceSum", tensor_ops.Max: "ReduceMax", pointwise.Min: "ReduceMin"}


def reduction(g: GraphBuilder, call: Call) -> None:
    # axes became an input of ReduceSum at opset 13, of ReduceMax and ReduceMin at opset 18
    op_type = REDUCTIONS[call.fn]
    axis, keepdims = call.params["axis"], int(call.params["keepdims"])
    inputs = [g.input(call.args[0])]
    if axis is None:  # every axis: no axes at all
        g.node(op_type, inputs, call.output, keepdims=keepdims)
    elif op_type == "ReduceSum" or g.opset >= 18:
        g.node(op_type, inputs + [g.int64s(axis, "axes")], call.output, keepdims=keepdims)
    else:
        g.node(op_type, inputs, call.output, axes=list(axis), keepdims=keepdims)


def reshape(g: GraphBuilder, call: Call) -> None:
    # the output's own shape (no -1 left); a 0 in it is a real 0 (allowzero), not "copy this dim"
    shape = list(call.output.shape)
    zero = {"allowzero": 1} if 0 in shape and g.opset >= 14 else {}
    g.node("Reshape", [g.input(call.args[0]), g.int64s(shape, "shape")], call.output, **zero)


def permute(g: GraphBuilder, call: Call) -> None:
    g.node("Transpose", [g.input(call.args[0])], call.output, perm=list(call.params["dims"]))


def get_item(g: GraphBuilder, call: Call) -> None:
    """Integers (Gather, which drops the axis) and slices (Slice); index arrays are refused."""
    (x,) = call.args
    index = call.params["index"]
    entries = index if isinstance(index, tuple) else (index,)
    if not all(type(i) in (int, slice) or i is Ellipsis for i in entries):
        raise ExportError(
            f"getitem: the index {index!r} holds index arrays, booleans or None; the exporter "
            "writes integers and slices only (x[0], x[:, 1:3], x[..., ::2])"
        )
    if Ellipsis in entries:
        at = entries.index(Ellipsis)
        fill = (slice(None),) * (x.ndim - len(entries) + 1)
        entries = entries[:at] + fill + entries[at + 1 :]
    value, axis = g.input(x), 0
    for entry, size in zip(entries, x.shape):
        if type(entry) is int:  # Gather with a 0-d index removes the axis, as x[i] does
            value = g.node("Gather", [value, g.constant(np.int64(entry), "index")], axis=axis)
            continue
        if entry != slice(None):
            value = g.node("Slice", [value, *_slice_inputs(g, entry, size, axis)])
        axis += 1
    g.node("Identity", [value], call.output)  # the result by the name the next op asks for


def cat(g: GraphBuilder, call: Call) -> None:
    g.node("Concat", [g.input(t) for t in call.args], call.output, axis=call.params["dim"])


def stack(g: GraphBuilder, call: Call) -> None:
    # each input gets the new axis (Unsqueeze), then Concat joins them along it
    dim = call.params["dim"]
    parts = [g.node("Unsqueeze", [g.input(t), g.int64s([dim], "axes")]) for t in call.args]
    g.node("Concat", parts, call.output, axis=dim)


def expand(g: GraphBuilder, call: Call) -> None:
    shape = g.int64s(call.output.shape, "shape")
    g.node("Expand", [g.input(call.args[0]), shape], call.output)


def _slice_inputs(g: GraphBuilder, entry: slice, size: int, axis: int) -> list[str]:
    """starts, ends, axes, steps of one Python slice, as ONNX Slice reads them."""
    start, stop, step = entry.indices(size)
    if step < 0 and stop < 0:
        stop = -size - 1  # "before the first element": ONNX would read -1 as the last one
    return [g.int64s([start], "starts"), g.int64s([stop], "ends"), g.int64s([axis], "axes"),
            g.int64s([step], "steps")]  # fmt: skip


TRANSLATIONS = {
    Conv2dFunction: conv2d,
    MaxPool2dFunction: max_pool2d,
    LocalResponseNormFunction: local_response_norm,
    BatchNormFunction: batch_norm,
    LinearFunction: linear,
    ReLUFunction: relu,
    BiasReLUFunction: bias_relu,
    DropoutFunction: dropout,
    SoftmaxFunction: softmax,
    LogSoftmaxFunction: softmax,
    tensor_ops.Cast: cast,
    tensor_ops.Sum: reduction,
    tensor_ops.Max: reduction,
    pointwise.Min: reduction,
    pointwise.Clamp: clamp,
    shape_ops.Cat: cat,
    shape_ops.Stack: stack,
    shape_ops.Expand: expand,
    tensor_ops.Reshape: reshape,
    tensor_ops.Permute: permute,
    tensor_ops.GetItem: get_item,
    **{fn: elementwise for fn in ELEMENTWISE},
}
