"""minidl as an ONNX backend (``onnx.backend.base.Backend``), the interface through which the
onnx package's backend test suite (``onnx.backend.test``) runs an engine:

    from minidl.onnx.backend import MinidlBackend
    rep = MinidlBackend.prepare(model_proto, device="CPU")   # or "CUDA"
    outputs = rep.run([x])                                    # NumPy arrays in, NumPy arrays out

``prepare`` imports the model with ``minidl.onnx.importer.load``; ``run_node`` wraps one node in a
model first. Device "CUDA" runs our CUDA kernels, or the kernel emulator where
``MINIDL_CUDA_EMULATE=1``. tests/test_onnx_backend.py runs the suite's cases for our op families.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper
from onnx.backend.base import Backend, BackendRep

from minidl import backend as devices
from minidl.autograd import no_grad
from minidl.onnx.importer import OnnxModel, load


def minidl_device(device: str) -> str:
    """ONNX's device names ("CPU", "CUDA", "CUDA:0") as minidl's ("cpu", "cuda")."""
    kind = device.split(":")[0].upper()
    if kind not in ("CPU", "CUDA"):
        raise ValueError(f"minidl backend: unknown device {device!r} (CPU or CUDA)")
    return kind.lower()


class MinidlRep(BackendRep):
    """A prepared model: ``run`` takes the inputs in the graph's order (or a dict by name)."""

    def __init__(self, model: OnnxModel):
        self.model = model

    def run(self, inputs, **kwargs) -> tuple[np.ndarray, ...]:
        with no_grad():
            if isinstance(inputs, dict):
                outputs = self.model(**inputs)
            else:
                inputs = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
                outputs = self.model(*inputs)
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return tuple(devices.to_numpy(t.data) for t in outputs)


class MinidlBackend(Backend):
    @classmethod
    def supports_device(cls, device: str) -> bool:
        if minidl_device(device) == "cpu":
            return True
        return devices.emulating() or devices.gpu_available()

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs) -> MinidlRep:
        super().prepare(model, device, **kwargs)  # onnx's own checks of the model
        return MinidlRep(load(model, device=minidl_device(device)))

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(
        cls,
        node: onnx.NodeProto,
        inputs: Sequence[np.ndarray],
        device: str = "CPU",
        outputs_info=None,
        **kwargs,
    ) -> tuple[np.ndarray, ...]:
        """Run one node on NumPy inputs: the node becomes a one-node model, whose inputs are
        typed from the arrays and whose outputs by ONNX's shape inference."""
        super().run_node(node, inputs, device=device, outputs_info=outputs_info)
        names = [name for name in node.input if name]
        graph_inputs = [
            helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.asarray(x).dtype), np.shape(x)
            )
            for name, x in zip(names, inputs)
        ]
        graph = helper.make_graph([node], "run_node", graph_inputs, [])
        opset = kwargs.get("opset_version", onnx.defs.onnx_opset_version())
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        # the outputs' types and shapes, as ONNX's shape inference finds them
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
        model.graph.output.extend(inferred[name] for name in node.output if name)
        return cls.run_model(model, list(inputs), device)


prepare = MinidlBackend.prepare
run_model = MinidlBackend.run_model
run_node = MinidlBackend.run_node
supports_device = MinidlBackend.supports_device
