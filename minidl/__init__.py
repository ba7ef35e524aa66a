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
from minidl.tensor_api import cat, stack
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


def zeros(*size, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return full(_size(size), 0.0, dtype=dtype, device=device, requires_grad=requires_grad)


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

    values = generator().standard_normal(_size(shape)).astype(dtype or np.float32)
    return Tensor(values, requires_grad, device=device)


def ones(*size, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    return full(_size(size), 1.0, dtype=dtype, device=device, requires_grad=requires_grad)


def full(size, fill_value, dtype=None, device: str = "cpu", requires_grad: bool = False) -> Tensor:
    """fill_value everywhere; its dtype as PyTorch infers it: bool, int64 or float32."""
    import numpy as np

    if dtype is None:
        dtype = bool if isinstance(fill_value, bool) else _number_dtype([fill_value])
    values = np.full(_size((size,)), fill_value, dtype=dtype)
    return Tensor(values, requires_grad, device=device)


def arange(start, end=None, step=1, dtype=None, device: str = "cpu", requires_grad=False):
    """[start, end) in steps of step (``arange(n)`` is 0..n-1); int64 when every argument is an
    integer, float32 when one is a float, as in PyTorch."""
    import numpy as np

    start, end = (0, start) if end is None else (start, end)
    if step == 0:
        raise RuntimeError("arange: step must be nonzero")
    if (end - start) * step < 0:
        raise RuntimeError(f"arange: upper bound and larger bound inconsistent with step sign "
                           f"(start={start}, end={end}, step={step})")  # fmt: skip
    values = np.arange(start, end, step, dtype=np.float64 if dtype is None else dtype)
    values = values.astype(dtype or _number_dtype([start, end, step]))
    return Tensor(values, requires_grad, device=device)


def zeros_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:  # noqa: A002
    return full(input.shape, 0, dtype or input.dtype, device or input.device, requires_grad)


def ones_like(input: Tensor, dtype=None, device=None, requires_grad: bool = False) -> Tensor:  # noqa: A002
    return full(input.shape, 1, dtype or input.dtype, device or input.device, requires_grad)


def _size(size) -> tuple:
    """PyTorch's two ways to give a size: ``ones(2, 3)`` or ``ones((2, 3))``."""
    return tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list)) else size


def _number_dtype(numbers) -> str:
    return "float32" if any(isinstance(n, float) for n in numbers) else "int64"


def __getattr__(name: str):
    """``mdl.testing`` on first use (``minidl.testing``: helpers for tests, not the engine)."""
    if name == "testing":
        import minidl.testing

        return minidl.testing
    raise AttributeError(f"module 'minidl' has no attribute {name!r}")


__all__ = [
    "Tensor",
    "arange",
    "cat",
    "from_numpy",
    "full",
    "functional",
    "get_num_threads",
    "gradcheck",
    "manual_seed",
    "nn",
    "no_grad",
    "ones",
    "ones_like",
    "optim",
    "precision",
    "randn",
    "set_num_threads",
    "stack",
    "tensor",
    "zeros",
    "zeros_like",
]
