"""An ONNX graph being written: its nodes, its initializers and the name of every value.

The exporter (``minidl/onnx/exporter.py``) hands each recorded op to a translation
(``minidl/onnx/export_ops.py``), which asks this builder for the names of the op's inputs and adds
the op's nodes. A value is known by the identity of the object that holds it:

- the model's input, and every tensor a recorded op made: named when its node is written;
- a parameter or a buffer: an initializer named as in ``state_dict`` ("features.conv1.weight"),
  written once, from the tensor's own array (bit for bit);
- anything else (a number, an array, a tensor made outside any op): a constant initializer.

Every object whose identity names a value is kept alive here, so Python never reuses its id.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

from minidl import backend


class ExportError(ValueError):
    """The model cannot be written as ONNX; the message names the op and the layer."""


class GraphBuilder:
    def __init__(self, opset: int, state: dict, output_names: dict):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.where = ""  # the layer whose op is being written: the nodes' name prefix
        self._values: dict[int, str] = {}  # id(tensor or array) -> value name
        self._alive: list = []  # what those ids belong to (see the module docstring)
        self._state = state  # id(tensor) and id(its array) -> (state_dict name, tensor)
        self._output_names = output_names  # id(an output tensor) -> the graph output's name
        self._count: Counter = Counter()

    # ---- values ----------------------------------------------------------------------------------
    def name(self, obj, name: str) -> str:
        """Say that ``obj`` (a tensor or an array) holds the value called ``name``."""
        self._values[id(obj)] = name
        self._alive.append(obj)
        return name

    def input(self, value) -> str:
        """The name of an op's input: a value made before, a parameter, or a new constant.
        None (a missing optional input, as a Conv without bias) is ONNX's empty name."""
        if value is None:
            return ""
        key = id(value)
        if key in self._values:
            return self._values[key]
        if key in self._state:
            state_name, tensor = self._state[key]
            self.initializers[state_name] = numpy_helper.from_array(tensor.numpy(), state_name)
            return self.name(value, state_name)
        array = value.numpy() if hasattr(value, "numpy") else backend.to_numpy(value)
        return self.name(value, self.constant(array))

    def constant(self, array, hint: str = "constant") -> str:
        """A new initializer holding ``array`` (its dtype kept); returns its name."""
        name = self._unique(f"{self.where}/{hint}" if self.where else hint)
        self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def int64s(self, values, hint: str) -> str:
        """A 1-D int64 constant: shapes, axes, starts and ends are inputs from some opset on."""
        return self.constant(np.asarray(values, dtype=np.int64).reshape(-1), hint)

    # ---- nodes -----------------------------------------------------------------------------------
    def node(self, op_type: str, inputs: list[str], output=None, **attributes) -> str:
        """Add one node; its output is named after the node (or the graph output's name, where
        ``output`` is one of the model's outputs) and returned. ``output``: the tensor it makes,
        or None for a step inside a translation."""
        node_name = self._unique(f"{self.where}/{op_type}" if self.where else op_type)
        value = node_name
        if output is not None:
            value = self.name(output, self._output_names.get(id(output), node_name))
        while inputs and inputs[-1] == "":  # trailing missing inputs are left out
            inputs = inputs[:-1]
        self.nodes.append(helper.make_node(op_type, inputs, [value], name=node_name, **attributes))
        return value

    def output(self, tensor, name: str) -> None:
        """Make ``tensor`` the graph output ``name``: an Identity where it has another name (the
        model returned its input, or a parameter)."""
        if self.input(tensor) != name:
            self.nodes.append(
                helper.make_node("Identity", [self.input(tensor)], [name], name=f"{name}/Identity")
            )

    def _unique(self, name: str) -> str:
        self._count[name] += 1
        count = self._count[name]
        return name if count == 1 else f"{name}_{count}"
