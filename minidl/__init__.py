"""minidl: a small, readable deep-learning engine (NumPy on the CPU, our CUDA kernels on the GPU).

    import minidl as mdl
    import minidl.functional as F

See docs/ for the math of each op and README.md for the tour.
"""

from pathlib import Path

from minidl import functional, memory, nn, optim, precision
from minidl.autograd import no_grad
from minidl.gradcheck import gradcheck
from minidl.random import manual_seed
from minidl.tensor import Tensor, tensor
from minidl.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"

# In a wheel or an editable install, the repository's models/ folder is the minidl.models package
# (pyproject's package-dir). In a checkout used without installing (PYTHONPATH=.), find it here.
_checkout_models = Path(__file__).resolve().parent.parent / "models"
if not (Path(__file__).resolve().parent / "models").is_dir() and _checkout_models.is_dir():
    __path__.append(str(_checkout_models.parent))  # noqa: F821 - a package's own __path__


memory.keep_freed_memory()

float32 = "float32"
float64 = "float64"


def zeros(*shape, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    import numpy as np

    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    return Tensor(np.zeros(shape, dtype=dtype or np.float32), requires_grad, device=device)


def from_numpy(array) -> Tensor:
    """A CPU tensor that shares ``array``'s memory, as ``torch.from_numpy``: a write to either
    shows in both. ``tensor(array)`` and ``nn.Parameter(array)`` copy it."""
    import numpy as np

    from minidl import dtypes

    if not isinstance(array, np.ndarray):
        raise TypeError(f"from_numpy: expected a NumPy array, got {type(array).__name__}")
    if dtypes.kind(array.dtype) not in "biuf":
        raise TypeError(f"from_numpy: needs booleans, integers or floats, got {array.dtype}")
    return Tensor._wrap(array, "cpu", False)


def randn(*shape, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """Standard normal values from the global generator (``manual_seed``)."""
    import numpy as np

    from minidl.random import generator

    shape = tuple(shape[0]) if len(shape) == 1 and isinstance(shape[0], (tuple, list)) else shape
    values = generator().standard_normal(shape).astype(dtype or np.float32)
    return Tensor(values, requires_grad, device=device)


def __getattr__(name: str):
    """``mdl.testing`` on first use (``minidl.testing``: helpers for tests, not the engine)."""
    if name == "testing":
        import minidl.testing

        return minidl.testing
    raise AttributeError(f"module 'minidl' has no attribute {name!r}")


__all__ = [
    "Tensor",
    "from_numpy",
    "functional",
    "get_num_threads",
    "gradcheck",
    "manual_seed",
    "nn",
    "no_grad",
    "optim",
    "precision",
    "randn",
    "set_num_threads",
    "tensor",
    "zeros",
]
