"""Module: a layer or a model, holding Parameters, buffers and sub-modules in definition order.

A buffer is a Tensor the module owns but no optimizer updates (BatchNorm's running statistics):
it is in ``state_dict`` (so in checkpoints), moved by ``to(device)`` and cast by ``double()`` /
``float()``, and never in ``parameters()``."""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import numpy as np

from minidl import backend, dtypes
from minidl.autograd import no_grad
from minidl.tensor import Tensor


class IncompatibleKeys(NamedTuple):
    """What load_state_dict returns, as PyTorch's: the model's names the state dict lacked, and
    the state dict's names the model lacks (both empty after a strict load)."""

    missing_keys: list[str]
    unexpected_keys: list[str]

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"  # as PyTorch prints it
        missing, unexpected = self.missing_keys, self.unexpected_keys
        return f"IncompatibleKeys(missing_keys={missing}, unexpected_keys={unexpected})"


class Parameter(Tensor):
    """A tensor that a Module owns and an optimizer updates (requires_grad by default)."""

    def __init__(self, data, requires_grad: bool = True, dtype=None, device: str = "cpu"):
        super().__init__(data, requires_grad=requires_grad, dtype=dtype, device=device)


class Module:
    """Base class of layers and models, with PyTorch's names (parameters, state_dict, ...)."""

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "training", True)

    # ---- registration: attributes that are Parameters or Modules are remembered in order -------
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() first")
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers:  # assigning to a buffer replaces it (a Tensor or None)
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(
                    f"{type(self).__name__}.{name} is a buffer: assign a Tensor or None, "
                    f"got {type(value).__name__}"
                )
            buffers[name] = value
            return
        if name in self._parameters and not isinstance(value, (Parameter, type(None))):
            # As PyTorch: ``m.weight = m.weight * 2`` would drop the Parameter without a word (an
            # in-place ``m.weight *= 2`` under no_grad keeps it).
            raise TypeError(
                f"cannot assign '{type(value).__name__}' as parameter '{name}' "
                "(nn.Parameter or None expected)"
            )
        if not (isinstance(value, Parameter) and name in self._parameters):
            self._parameters.pop(name, None)  # a Parameter replaced by one keeps its place
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name):
        for store in ("_parameters", "_buffers", "_modules"):
            registry = self.__dict__.get(store, {})
            if name in registry:
                return registry[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def register_parameter(self, name: str, value: Parameter | None) -> None:
        if value is None:
            object.__setattr__(self, name, None)
        else:
            setattr(self, name, value)

    def register_buffer(self, name: str, value: Tensor | None) -> None:
        """Keep ``value`` as state that is saved and moved with the module but never trained."""
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(
                f"register_buffer: {name} must be a Tensor or None, got {type(value).__name__}"
            )
        if name in self._parameters or name in self._modules:
            raise KeyError(f"register_buffer: {name!r} is already a parameter or sub-module")
        if value is not None:
            value.requires_grad = False
        self._buffers[name] = value

    # ---- walking the tree ------------------------------------------------------------------------
    def named_modules(self, prefix: str = "", memo: set | None = None):
        """(name, module) pairs, this one first; a module reached twice is listed once, under
        its first name, as in PyTorch."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self):
        return [m for _, m in self.named_modules()]

    def children(self):
        return list(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        """(name, parameter) pairs: a module's own first (weight before bias), then its children.
        A parameter reached twice (a layer used twice) is listed once, under its first name, as
        in PyTorch, so an optimizer steps it once."""
        yield from _unique(self, "_parameters", prefix)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = ""):
        """(name, buffer) pairs, in the order of named_parameters; None buffers are skipped."""
        yield from _unique(self, "_buffers", prefix)

    def buffers(self) -> list[Tensor]:
        return [b for _, b in self.named_buffers()]

    def named_state(self, prefix: str = ""):
        """What state_dict holds, in PyTorch's order: a module's parameters, then its buffers,
        then its children's."""
        for name, p in self._parameters.items():
            yield (f"{prefix}.{name}" if prefix else name), p
        for name, b in self._buffers.items():
            if b is not None:
                yield (f"{prefix}.{name}" if prefix else name), b
        for name, child in self._modules.items():
            yield from child.named_state(f"{prefix}.{name}" if prefix else name)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- state -----------------------------------------------------------------------------------
    def state_dict(self) -> OrderedDict:
        """Every parameter and buffer as a NumPy array (a copy), keyed by its dotted name."""
        return OrderedDict((name, p.numpy().copy()) for name, p in self.named_state())

    def load_state_dict(self, state, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (NumPy, or the Tensors of a minidl or PyTorch state dict) into the
        parameters and buffers, in place. ``strict`` (the default, as PyTorch's): the names must
        be the model's, no more and no fewer; ``strict=False`` loads the names that match.
        Shapes must match either way. Returns PyTorch's (missing_keys, unexpected_keys)."""
        state = {k: v.numpy() if isinstance(v, Tensor) else v for k, v in state.items()}
        for prefix, module in self.named_modules():
            module._complete_state(f"{prefix}." if prefix else "", state)
        own = OrderedDict(self.named_state())  # parameters and buffers
        missing = [k for k in own if k not in state]
        extra = [k for k in state if k not in own]
        if strict and (missing or extra):
            raise KeyError(
                f"load_state_dict: missing entries {missing}, unexpected entries {extra} "
                "(strict=False loads the entries that match)"
            )
        own = OrderedDict((name, p) for name, p in own.items() if name in state)
        for name, p in own.items():
            value = np.asarray(backend.to_numpy(state[name]))
            if tuple(value.shape) != p.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {tuple(value.shape)}, "
                    f"the model expects {p.shape}"
                )
        for name, p in own.items():
            # into the tensor's own array (as PyTorch's copy_): it keeps its C-contiguous layout,
            # dtype and device, and optimizers keep their references
            value = backend.move(np.asarray(state[name]).astype(p.dtype), p.device)
            if not (p.data == value).all():  # a change an optimizer's master copy must follow
                p.data[...] = value
                p._bump_version()
        return IncompatibleKeys(missing, extra)

    def _complete_state(self, prefix: str, state: dict) -> None:
        """Add to ``state`` (a dict being loaded) what an older state dict of this module lacks;
        ``prefix`` is the module's dotted name and a dot. Most modules lack nothing."""

    # ---- mode, device, dtype ---------------------------------------------------------------------
    def train(self, mode: bool = True):
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device: str):
        """Move every parameter (and its gradient) in place, so optimizers keep their references."""
        device = backend.check_device(device)
        for p in self.parameters():
            p.data = backend.move(p.data, device)
            p.device = device
            if p.grad is not None:
                p.grad = p.grad.to(device)
        for b in self.buffers():  # in place too: a layer keeps its reference to its buffer
            b.data = backend.move(b.data, device)
            b.device = device
        return self

    def cuda(self):
        return self.to("cuda")

    def cpu(self):
        return self.to("cpu")

    def astype(self, dtype):
        for p in self.parameters():
            p.data = p.data.astype(dtype)
            p.grad = None
        for b in self.buffers():
            if dtypes.kind(b.dtype) == "f":  # floating state only (a step counter stays an int)
                b.data = b.data.astype(dtype)
        return self

    def double(self):
        return self.astype(np.float64)

    def float(self):
        return self.astype(np.float32)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # ---- running ---------------------------------------------------------------------------------
    def forward(self, *args):
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args, **kwargs):
        out = self.forward(*args, **kwargs)
        if _recording is not None and not self._modules:
            _recording.append((self, out))
        return out

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        if not self._modules:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"{type(self).__name__}("]
        for name, child in self._modules.items():
            text = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {text}")
        return "\n".join(lines) + "\n)"

    def summary(self, input_shape, batch_size: int = 1, show: bool = True) -> list[tuple]:
        """Run a batch of zeros through the model (in eval mode, under no_grad) and print each
        layer's output shape and parameter count (the table every AlexNet write-up shows).
        Returns the rows."""
        global _recording
        names = {id(m): name for name, m in self.named_modules()}
        params = self.parameters()
        device = params[0].device if params else "cpu"
        dtype = params[0].dtype if params else np.float32
        xp = backend.xp(device)
        x = Tensor._wrap(xp.zeros((batch_size, *input_shape), dtype=dtype), device, False)
        _recording = []
        modes = [(m, m.training) for m in self.modules()]
        self.eval()  # eval: BatchNorm's running statistics are not touched by the zeros
        try:
            with no_grad():
                self(x)
            calls = _recording
        finally:
            _recording = None
            for m, mode in modes:
                object.__setattr__(m, "training", mode)
        rows = [
            (names.get(id(m), "?"), type(m).__name__, tuple(out.shape[1:]), m.num_parameters())
            for m, out in calls
        ]
        if show:
            print(format_summary(rows, self.num_parameters(), input_shape))
        return rows


def _unique(module: Module, store: str, prefix: str):
    """(dotted name, tensor) for every tensor in each module's ``store``, each tensor once."""
    seen = set()
    for path, m in module.named_modules(prefix):
        for name, t in m.__dict__[store].items():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                yield (f"{path}.{name}" if path else name), t


_recording: list | None = None  # set while summary() runs: (leaf module, output) per call


def format_summary(rows, total: int, input_shape) -> str:
    header = f"{'layer':<20}{'type':<20}{'output shape':<22}{'params':>12}"
    lines = [
        header,
        "-" * len(header),
        f"{'input':<20}{'':<20}{str(tuple(input_shape)):<22}{'':>12}",
    ]
    for name, kind, shape, count in rows:
        lines.append(f"{name:<20}{kind:<20}{str(shape):<22}{count:>12,}")
    lines += ["-" * len(header), f"total parameters: {total:,}"]
    return "\n".join(lines)


class Sequential(Module):
    """Modules applied in order; names are their positions ("0", "1", ...) unless given."""

    def __init__(self, *modules, **named):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)
        for name, m in named.items():
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __len__(self) -> int:
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())
