"""Write a minidl model as an ONNX file: ``export(model, example_input, path)``.

Three steps (docs/onnx.md walks through them):

1. **Record** the forward once on ``example_input``, in eval mode (``minidl/onnx/tracing.py``):
   the list of ops it ran, each with its inputs, its attributes and the layer that ran it.
2. **Translate** each op into ONNX nodes (``minidl/onnx/export_ops.py``), converting where the
   conventions differ (``minidl/onnx/conventions.py``: LRN's alpha, BatchNorm's momentum, pads).
   Parameters and buffers become initializers named as in ``state_dict``, bit for bit.
3. **Check** the model with ``onnx.checker`` (full check: shape inference included) and save it.

What is written is the model's inference form, as ``torch.onnx.export`` writes by default
(``training=TrainingMode.EVAL``): a model in training mode is switched to eval for the recording
and back afterwards, so Dropout is the identity (it leaves no node) and BatchNorm normalizes with
its running statistics. The graph has the example input's shape, batch size included.

Only float32 models are written: a float64 or 16-bit model is refused by name (call
``model.float()`` first) rather than cast, since a cast would change the weights' bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

import minidl
from minidl.autograd import op_name
from minidl.nn.module import Module
from minidl.onnx.export_ops import TRANSLATIONS
from minidl.onnx.graph import ExportError, GraphBuilder
from minidl.onnx.tracing import Call, trace
from minidl.tensor import Tensor

DEFAULT_OPSET = 17
FIRST_OPSET = 13  # Softmax's axis means "this axis" from 13 on (before: flatten from axis on)


def export(
    model: Module,
    example_input,
    path,
    opset: int = DEFAULT_OPSET,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
) -> Path:
    """Write ``model`` as an ONNX file at ``path`` and return the path.

    ``example_input``: a Tensor (or NumPy array) the model takes, e.g. ``(1, 3, 227, 227)``; its
    shape becomes the graph input's. ``opset``: 13 up to what the installed onnx knows (17 by
    default). ``input_names`` (one) and ``output_names`` (one per output) name the graph's values
    ("input" and "output", or "output0", "output1", ... by default)."""
    _check_opset(opset)
    x = _example_tensor(example_input, model)
    _check_float32(model, x)
    calls, x, outputs = _record_in_eval(model, x)
    outputs = _output_tensors(outputs)
    names_in = input_names or ["input"]
    names_out = output_names or (
        ["output"] if len(outputs) == 1 else [f"output{i}" for i in range(len(outputs))]
    )
    if len(names_in) != 1 or len(names_out) != len(outputs):
        raise ValueError(
            f"export: input_names needs 1 name and output_names {len(outputs)} (one per output), "
            f"got {len(names_in)} and {len(names_out)}"
        )
    graph = _graph(model, calls, x, outputs, opset, names_in[0], names_out)
    onnx_model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="minidl",
        producer_version=minidl.__version__,
    )
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save(onnx_model, str(path))
    return Path(path)


# ---- before: what is exported ------------------------------------------------------------------
def _check_opset(opset) -> None:
    newest = onnx.defs.onnx_opset_version()
    if not isinstance(opset, int) or not FIRST_OPSET <= opset <= newest:
        raise ValueError(
            f"export: opset must be an int from {FIRST_OPSET} (Softmax's axis semantics changed "
            f"at 13) to {newest} (the newest this onnx knows), got {opset!r}"
        )


def _example_tensor(example_input, model: Module) -> Tensor:
    if isinstance(example_input, Tensor):
        return example_input
    if isinstance(example_input, np.ndarray):
        params = model.parameters()
        return Tensor(example_input, device=params[0].device if params else "cpu")
    raise TypeError(
        f"export: example_input must be a Tensor or a NumPy array, got "
        f"{type(example_input).__name__}"
    )


def _check_float32(model: Module, x: Tensor) -> None:
    """float32 parameters, buffers and input; anything else is refused by name, never cast."""
    how = (
        "minidl writes float32 ONNX files, bit for bit (a cast would change the weights): "
        "call model.float() first (for a mixed-precision model, export its float32 master "
        "weights)"
    )
    for name, tensor in model.named_state():
        if tensor.dtype.kind not in "iub" and tensor.dtype != np.float32:
            raise TypeError(f"export: {name} is {tensor.dtype}; {how}")
    if x.dtype.kind not in "iub" and x.dtype != np.float32:
        raise TypeError(f"export: example_input is {x.dtype}; {how} and pass a float32 input")


def _record_in_eval(model: Module, x: Tensor):
    """trace() in eval mode; each layer's own mode is given back afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return trace(model, x)
    finally:
        for m, mode in modes:
            object.__setattr__(m, "training", mode)


def _output_tensors(outputs) -> list[Tensor]:
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    for out in outputs:
        if not isinstance(out, Tensor):
            raise TypeError(
                f"export: the model must return a Tensor or a tuple of Tensors, got "
                f"{type(out).__name__}"
            )
    return outputs


# ---- the graph ---------------------------------------------------------------------------------
def where(call: Call) -> str:
    """The layer that ran a call, for messages: 'features.conv1' (Conv2d)."""
    layer = type(call.layer).__name__
    return f"module '{call.module}' ({layer})" if call.module else f"the model's forward ({layer})"


def _graph(model, calls, x, outputs, opset, input_name, output_names) -> onnx.GraphProto:
    unknown = [c for c in calls if c.fn not in TRANSLATIONS]
    if unknown:
        places = (f"{op_name(c.fn)} ({c.fn.__name__}) in {where(c)}" for c in unknown)
        listed = "; ".join(dict.fromkeys(places))  # each op and place once, in order
        known = ", ".join(sorted({op_name(fn) for fn in TRANSLATIONS}))
        raise ExportError(f"export: no ONNX translation for {listed}. The exporter knows: {known}")
    state = {}
    for name, tensor in model.named_state():  # a tensor reached twice keeps its first name
        state.setdefault(id(tensor), (name, tensor))
        state.setdefault(id(tensor.data), (name, tensor))
    g = GraphBuilder(opset, state, {id(t): n for t, n in zip(outputs, output_names)})
    g.name(x, input_name)
    for call in calls:
        g.where = call.module
        try:
            TRANSLATIONS[call.fn](g, call)
        except ExportError as err:
            raise ExportError(f"export: {where(call)}: {err}") from None
    g.where = ""
    for tensor, name in zip(outputs, output_names):
        g.output(tensor, name)
    nodes, initializers = _used_only(g.nodes, g.initializers, output_names)
    return helper.make_graph(
        nodes,
        type(model).__name__,
        [_value_info(input_name, x)],
        [_value_info(n, t) for t, n in zip(outputs, output_names)],
        initializer=initializers,
    )


def _used_only(nodes, initializers: dict, output_names) -> tuple[list, list]:
    """The nodes and initializers the outputs depend on (a value the forward computed and never
    used, a debugging print's, is left out)."""
    needed, kept = set(output_names), []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(node.input)
    return kept[::-1], [t for name, t in initializers.items() if name in needed]


def _value_info(name: str, tensor: Tensor) -> onnx.ValueInfoProto:
    elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(tensor.dtype))
    return helper.make_tensor_value_info(name, elem_type, list(tensor.shape))
