"""ONNX in and out (docs/onnx.md): ``export(model, example_input, path)`` writes a model as an
ONNX file; ``load(path, device="cpu")`` reads one as a trainable ``nn.Module``.

Needs the ``onnx`` package (``pip install "minidl[onnx]"``); ``import minidl`` never imports this
package, so minidl itself works without it.
"""

try:
    import onnx  # noqa: F401  (the extra this package needs; said at once if it is missing)
except ImportError as err:
    raise ImportError(
        f'minidl.onnx needs the onnx package ({err}): pip install "minidl[onnx]"'
    ) from err

from minidl.onnx.exporter import export  # noqa: E402
from minidl.onnx.graph import ExportError  # noqa: E402
from minidl.onnx.importer import OnnxImportError, load  # noqa: E402

__all__ = ["export", "load", "ExportError", "OnnxImportError"]
