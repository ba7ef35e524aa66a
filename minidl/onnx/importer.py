"""Import an ONNX model as a trainable minidl Module: ``load(path) -> OnnxModel``.

    from minidl.onnx.importer import load
    model = load("bvlcalexnet-12.onnx")          # eval() mode, on the CPU
    probs = model(image)                         # image: (1, 3, 224, 224), a Tensor or an array

How a file becomes a Module:

1. The file is read and checked (``onnx.checker``); a file that is not a model, or is cut short,
   is an ``OnnxImportError`` that names it.
2. Each initializer (a weight stored in the file) becomes an ``nn.Parameter`` of the model, so an
   optimizer can fine-tune it and ``state_dict`` saves it; BatchNormalization's running mean and
   variance become buffers, as in ``nn.BatchNorm2d``, and integer initializers (shapes) buffers
   too. Their names are the file's, made into identifiers (``features.0.weight`` ->
   ``features_0_weight``); ``model.onnx_names`` maps each back.
3. Each node becomes a ``run`` closure built by its op type's builder (``layer_nodes.py``,
   ``math_nodes.py``), reading its attributes once. Every node minidl cannot import is collected
   first and reported in one ``OnnxImportError``, so one attempt shows all that is missing.
4. ``forward`` checks the inputs' shapes against the file's, then runs the nodes in the file's
   order (ONNX stores them topologically sorted) on a dictionary of named values. Every step is a
   minidl op, so autograd records it and the device picks the NumPy or the CUDA branch.

The model comes back in ``eval()`` mode, as ONNX describes inference: Dropout passes through and
BatchNormalization uses its running statistics. ``model.train()`` turns both to training, with
minidl's semantics (inverted dropout, PyTorch's BatchNorm momentum converted from ONNX's).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from minidl import backend
from minidl.nn.module import Module, Parameter
from minidl.onnx.layer_nodes import LAYER_BUILDERS
from minidl.onnx.math_nodes import MATH_BUILDERS
from minidl.onnx.node import OnnxNode, Unsupported
from minidl.tensor import Tensor

BUILDERS = {**LAYER_BUILDERS, **MATH_BUILDERS}


class OnnxImportError(ValueError):
    """A file that cannot be imported: unreadable, or with nodes minidl does not support."""


# ---- reading -------------------------------------------------------------------------------------
def read_model(source):
    """(ModelProto, a label for messages) from a path or a ModelProto; checked by onnx.checker."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        model, label = source, f"model {source.graph.name or '(unnamed)'}"
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise FileNotFoundError(f"onnx load: no such file: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as error:  # protobuf's DecodeError for a cut file, among others
            raise OnnxImportError(f"{path}: not a readable ONNX file ({error})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as error:  # a cut can fall between fields: the model then lacks parts
        raise OnnxImportError(f"{label}: not a valid ONNX model ({error})") from None
    return model, label


def default_opset(model) -> int:
    """The version of the default ("" or "ai.onnx") operator set the file imports."""
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1  # IR version 1 files carry no opset_import


def to_array(tensor_proto) -> np.ndarray:
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor_proto)


def constant_value(node) -> np.ndarray:
    """The value of a Constant node, from whichever attribute carries it."""
    from onnx import helper

    attribute = node.attribute[0]
    value = helper.get_attribute_value(attribute)
    if attribute.name == "value":
        return to_array(value)
    if attribute.name in ("value_float", "value_floats"):
        return np.array(value, dtype=np.float32)
    if attribute.name in ("value_int", "value_ints"):
        return np.array(value, dtype=np.int64)
    raise Unsupported(f"a Constant given as {attribute.name}")


def constant_of_shape(node, static: dict) -> np.ndarray:
    """ConstantOfShape with a shape known at load time: a filled array (0.0 float by default)."""
    if node.input[0] not in static:
        raise Unsupported("a shape computed while the model runs")
    fill = to_array(node.attribute[0].t) if node.attribute else np.zeros(1, np.float32)
    return np.full(tuple(int(d) for d in static[node.input[0]]), fill.reshape(-1)[0], fill.dtype)


# ---- building ------------------------------------------------------------------------------------
def identifier(name: str, taken: set) -> str:
    """A file's value name as a Python attribute name, unique among ``taken``."""
    base = re.sub(r"\W", "_", name) or "value"
    base = f"_{base}" if base[0].isdigit() else base
    candidate, count = base, 1
    while candidate in taken:
        candidate, count = f"{base}_{count}", count + 1
    taken.add(candidate)
    return candidate


def statistics_names(graph) -> set:
    """Initializers that BatchNormalization reads as running mean and variance (buffers)."""
    return {n.input[i] for n in graph.node if n.op_type == "BatchNormalization" for i in (3, 4)}


def node_label(node, index: int) -> str:
    return node.name or f"#{index}"


def build_steps(graph, opset: int, static: dict) -> list:
    """(node, run) for every node to run; Constant nodes are folded into ``static``. Collects
    every unsupported node and raises once."""
    from onnx import helper

    steps, problems = [], []
    for index, proto in enumerate(graph.node):
        label = node_label(proto, index)
        try:
            if proto.domain not in ("", "ai.onnx"):
                raise Unsupported(f"operator domain {proto.domain!r}")
            if proto.op_type == "Constant":
                static[proto.output[0]] = constant_value(proto)
                continue
            if proto.op_type == "ConstantOfShape":
                static[proto.output[0]] = constant_of_shape(proto, static)
                continue
            if proto.op_type not in BUILDERS:
                raise Unsupported("this op type is not supported")
            attrs = {a.name: helper.get_attribute_value(a) for a in proto.attribute}
            known = {i: static[name] for i, name in enumerate(proto.input) if name in static}
            node = OnnxNode(
                label, proto.op_type, list(proto.input), list(proto.output), attrs, opset, known
            )
            steps.append((node, BUILDERS[proto.op_type](node)))
        except Unsupported as reason:
            problems.append(f"  node {label!r} ({proto.op_type}): {reason}")
    if problems:
        raise Unsupported("\n".join(problems))
    return steps


def declared_dtype(value_info):
    """An input's element type from the file as a NumPy dtype (None if the file leaves it out)."""
    from onnx import helper

    element = value_info.type.tensor_type.elem_type
    return np.dtype(helper.tensor_dtype_to_np_dtype(element)) if element else None


def declared_shape(value_info) -> tuple:
    """An input's shape from the file: an int per fixed axis, None for a named (free) one."""
    dims = value_info.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)


# ---- the Module ----------------------------------------------------------------------------------
class OnnxModel(Module):
    """An ONNX graph as a Module: initializers are Parameters (BatchNorm statistics and integer
    values are buffers), nodes run in the file's order with minidl ops. Call it with the graph's
    inputs in order (or by name); it returns the one output, or a tuple of them."""

    def __init__(self, model, label: str = "model"):
        super().__init__()
        graph = model.graph
        self.label = label
        self._device = "cpu"
        self.opset = default_opset(model)
        static = {t.name: to_array(t) for t in graph.initializer}
        weights = set(static)  # Constant nodes add to static below; they are not trained
        self.steps = build_steps(graph, self.opset, static)
        self.onnx_names = {}  # attribute name -> the file's name
        self._attribute_of = {}  # the file's name -> attribute name
        statistics = statistics_names(graph)
        # a value named like one of the Module's own attributes ("steps", "training", "to")
        # gets a suffix instead of replacing it
        taken = set(dir(type(self))) | set(vars(self)) | {"input_names", "output_names"}
        taken |= {"input_shapes", "input_dtypes"}
        for name, value in static.items():
            attribute = identifier(name, taken)
            learns = name in weights and value.dtype.kind == "f" and name not in statistics
            if learns:
                setattr(self, attribute, Parameter(value))
            else:
                self.register_buffer(attribute, Tensor(value))
            self.onnx_names[attribute], self._attribute_of[name] = name, attribute
        fed = [i for i in graph.input if i.name not in static]  # IR < 4 lists weights as inputs
        self.input_names = [i.name for i in fed]
        self.input_shapes = {i.name: declared_shape(i) for i in fed}
        self.input_dtypes = {i.name: declared_dtype(i) for i in fed}
        self.output_names = [o.name for o in graph.output]

    @property
    def device(self) -> str:
        """Where the model runs (``load``'s device, then ``to``'s): inputs given as arrays go there,
        even for a graph without a single weight."""
        return self._device

    def to(self, device: str):
        super().to(device)
        self._device = backend.check_device(device)
        return self

    def _input_tensor(self, name: str, value) -> Tensor:
        """An input as a Tensor on the model's device, its shape checked against the file's."""
        if not isinstance(value, Tensor):
            value = Tensor(np.asarray(value), device=self.device)
        dtype = self.input_dtypes[name]
        if dtype is not None and value.dtype != dtype:
            raise TypeError(
                f"{self.label}: input {name!r} has dtype {value.dtype}, the model expects {dtype}"
            )
        expected = self.input_shapes[name]
        fits = len(expected) == value.ndim and all(
            e is None or e == d for e, d in zip(expected, value.shape)
        )
        if expected and not fits:
            shown = tuple("?" if e is None else e for e in expected)
            raise ValueError(
                f"{self.label}: input {name!r} has shape {tuple(value.shape)}, the model expects "
                f"{shown}" + (" (? is any size)" if None in expected else "")
            )
        return value

    def _inputs(self, args, kwargs) -> dict:
        if len(args) > len(self.input_names):
            raise TypeError(
                f"{self.label}: {len(args)} inputs given, the model takes {len(self.input_names)}: "
                f"{self.input_names}"
            )
        given = dict(zip(self.input_names, args), **kwargs)
        missing = [n for n in self.input_names if n not in given]
        unknown = [n for n in given if n not in self.input_names]
        if missing or unknown:
            raise TypeError(
                f"{self.label}: inputs {self.input_names} expected; missing {missing}, "
                f"unknown {unknown}"
            )
        return {name: self._input_tensor(name, value) for name, value in given.items()}

    def values(self, *args, **kwargs) -> dict:
        """Run the graph and return every named value (inputs, weights, each node's outputs) as
        {the file's name: Tensor}: the activations layer by layer, for a look inside."""
        values = self._inputs(args, kwargs)
        for name, attribute in self._attribute_of.items():
            values[name] = getattr(self, attribute)
        for node, run in self.steps:
            inputs = [values[name] if name else None for name in node.inputs]
            try:
                outputs = run(inputs, self.training)
            except (ValueError, TypeError, RuntimeError) as error:
                raise type(error)(
                    f"{self.label}: node {node.name!r} ({node.op_type}): {error}"
                ) from error
            outputs = outputs if isinstance(outputs, list) else [outputs]
            for name, value in zip(node.outputs, outputs):
                values[name] = value
        return values

    def forward(self, *args, **kwargs):
        values = self.values(*args, **kwargs)
        results = tuple(values[name] for name in self.output_names)
        return results[0] if len(results) == 1 else results


def load(source, device: str = "cpu") -> OnnxModel:
    """The model in an ONNX file (a path, or an ``onnx.ModelProto``) as a trainable Module on
    ``device``, in eval() mode. Raises ``OnnxImportError`` naming the file if it cannot be read,
    or listing every node minidl does not support."""
    model, label = read_model(source)
    try:
        module = OnnxModel(model, label)
    except Unsupported as problems:
        raise OnnxImportError(f"{label}: cannot import these nodes:\n{problems}") from None
    return module.to(device).eval()
