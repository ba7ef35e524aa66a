"""ONNX in and out (docs/onnx.md): ``export(model, example_input, path)`` writes a model as an
ONNX file; ``load(path, device="cpu")`` reads one as a trainable ``nn.Module``.

Needs the ``onnx`` package (``pip install "minidl[onnx]"``); ``import minidl`` never imports this
package, so minidl itself works without it.
"""

from minidl.onnx.exporter import export
from minidl.onnx.graph import ExportError
from minidl.onnx.importer import OnnxImportError, load

__all__ = ["export", "load", "ExportError", "OnnxImportError"]
