"""Define-by-run autograd: the Function protocol and the backward pass.

Every op is a ``Function`` with a ``forward(ctx, *arrays, **params)`` that returns an array and a
``backward(ctx, dy)`` that returns one gradient per array input (``None`` where there is none).
``Function.apply`` runs forward on the tensors' arrays and, when any input needs a gradient,
records a ``Node`` on the output. ``backward`` walks those nodes in reverse topological order.

A forward may also return a Tensor, as a PyTorch ``Function``'s does: ``apply`` takes its array.
An op that computes in floating point only sets ``dtype_kinds = "f"`` and ``apply`` refuses an
integer or bool input by the op's name, never converting it silently.

The graph sees a tensor as a ``GraphTensor``: its array, device, ``requires_grad``, the Node that
made it and its gradient. ``minidl.tensor.Tensor`` (the user's face: constructors, operators) is
that class with everything else added, so this module stands below it and never imports it.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import defaultdict

import numpy as np

from minidl import dtypes, versions
from minidl.versions import Version

_grad_enabled = True
# While profile() runs: op name -> [forward seconds, backward seconds, calls], and what to call
# before each clock read (waiting for the GPU).
_profile: dict | None = None
_sync = None


def is_grad_enabled() -> bool:
    return _grad_enabled


@contextlib.contextmanager
def profile(synchronize=None):
    """Time every op's forward and backward while the block runs; yields the table
    {op name: [forward seconds, backward seconds, calls]}. ``synchronize`` (e.g. waiting for the
    GPU) runs before each clock read, so asynchronous launches are charged to the right op."""
    global _profile, _sync
    previous = _profile, _sync
    _profile, _sync = defaultdict(lambda: [0.0, 0.0, 0]), synchronize
    try:
        yield _profile
    finally:
        _profile, _sync = previous


def _clock() -> float:
    if _sync is not None:
        _sync()
    return time.perf_counter()


@contextlib.contextmanager
def no_grad():
    """Run ops without recording the graph (evaluation, optimizer updates)."""
    global _grad_enabled
    previous = _grad_enabled
    _grad_enabled = False
    try:
        yield
    finally:
        _grad_enabled = previous


class Context:
    """What forward hands to backward: the device and the arrays it chose to save."""

    def __init__(self, device: str, needs_input_grad: tuple[bool, ...]):
        self.device = device
        self.needs_input_grad = needs_input_grad
        self.saved: tuple = ()

    def save(self, *values) -> None:
        self.saved = values


class GraphTensor:
    """What the graph needs of a tensor; ``minidl.tensor.Tensor`` is the class users meet."""

    data: object  # the array (NumPy, or CuPy on a GPU)
    device: str
    requires_grad: bool
    _grad: GraphTensor | None
    _node: Node | None  # the op that made it; None for a leaf
    # PyTorch's version counter and views (minidl/versions.py): the writes into the values,
    # shared by the tensors of one array (x.detach(), views), made on the first need; and a
    # view's origin (its base, the op, its params, the count when it was last in step).
    _versions: Version | None = None
    _view: tuple | None = None

    @property
    def _version(self) -> int:
        return 0 if self._versions is None else self._versions.count

    def _version_counter(self) -> Version:
        if self._versions is None:
            self._versions = Version()
        return self._versions

    def _bump_version(self) -> None:
        """Say that the values were written in place."""
        self._version_counter().count += 1

    def _new(self, array, requires_grad: bool) -> GraphTensor:
        """A tensor around ``array`` on this tensor's device: an op's result, a leaf's grad."""
        raise NotImplementedError


class Node:
    """One recorded op: how to send the output's gradient back to its inputs.

    ``inputs``, in argument order: for an input made by another op, that op's Node; for a leaf
    that requires a gradient (a parameter), the Tensor itself, whose ``.grad`` collects it;
    None for anything else. The graph holds Nodes, never an intermediate Tensor, so an
    activation's array is freed as soon as no backward saved it (a conv's output before its
    ReLU, say): what backward needs is only what ``ctx.save`` kept. ``shape`` and ``dtype`` are
    the output's, to check the gradients that come back.
    """

    def __init__(self, fn: type, ctx: Context, inputs: tuple, shape: tuple, dtype):
        self.fn = fn
        self.ctx = ctx
        self.inputs = inputs
        self.shape = shape
        self.dtype = dtype
        self.saved_versions: tuple = ()  # (Version, count at forward) of the tensors ctx saved


class Function:
    """Base class of every differentiable op."""

    # The NumPy dtype kinds forward takes ("f": floating point only); None takes any dtype.
    dtype_kinds: str | None = None
    # The op's public name in error messages, where it is not the class name's stem.
    public_name: str | None = None
    # A float op on 16-bit inputs returns their dtype: NumPy widens bfloat16 to float32 beside a
    # Python float, so a wider result is rounded back once (minidl/dtypes.py). Only an op whose
    # purpose is to change the dtype (Cast) sets this False.
    keeps_16bit: bool = True

    @staticmethod
    def forward(ctx: Context, *args, **params):
        raise NotImplementedError("a Function needs forward(ctx, *arrays) returning one array")

    @staticmethod
    def backward(ctx: Context, dy):
        raise NotImplementedError("a Function needs backward(ctx, dy) for its gradients")

    @classmethod
    def apply(cls, *args, **params):
        tensors = [a for a in args if isinstance(a, GraphTensor)]
        if not tensors:
            raise TypeError(f"{cls.__name__}.apply: needs at least one Tensor argument")
        for t in tensors:
            if _grad_enabled and versions.is_stale(t):
                versions.retake_view(t)
        device = _common_device(cls.__name__, tensors)
        floating = _check_float_dtypes(cls.__name__, tensors)
        if cls.dtype_kinds is not None:
            _check_dtype_kinds(cls, tensors)
        needs = tuple(isinstance(a, GraphTensor) and a.requires_grad for a in args)
        ctx = Context(device, needs)
        arrays = [a.data if isinstance(a, GraphTensor) else a for a in args]
        if _profile is None:
            out = cls.forward(ctx, *arrays, **params)
        else:
            start = _clock()
            out = cls.forward(ctx, *arrays, **params)
            entry = _profile[cls.__name__]
            entry[0] += _clock() - start
            entry[2] += 1
        out = _output_array(cls, out)
        if floating is not None and cls.keeps_16bit:
            out = dtypes.round_to_storage(out, floating)  # computed in float32, rounded once
        requires_grad = _grad_enabled and any(needs)
        result = tensors[0]._new(out, requires_grad)
        if getattr(out, "base", None) is not None:
            versions.mark_view(result, tensors, cls, params)
        if requires_grad:
            inputs = tuple(_graph_input(a) if isinstance(a, GraphTensor) else None for a in args)
            result._node = Node(cls, ctx, inputs, tuple(out.shape), out.dtype)
            result._node.saved_versions = versions.saved_versions(ctx.saved, (*tensors, result))
        return result


def _graph_input(t):
    """What a Node keeps of an input Tensor (see Node): its producer, or a leaf that learns."""
    if t._node is not None:
        return t._node
    return t if t.requires_grad else None


def _common_device(op: str, tensors) -> str:
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise RuntimeError(f"{op}: all tensors must be on one device, got {sorted(devices)}")
    return devices.pop() if devices else "cpu"


def op_name(fn: type) -> str:
    """The public name of a Function's op: Conv2dFunction -> conv2d, LogSoftmaxFunction ->
    log_softmax, BiasReLUFunction -> bias_relu (an acronym stays one word), for error messages,
    unless ``public_name`` says."""
    if fn.public_name is not None:
        return fn.public_name
    stem = fn.__name__.removesuffix("Function") or fn.__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z][a-z])", "_", stem).lower()


def _kind(t) -> str:
    """dtypes.kind of a tensor's dtype; NumPy's own letter unless it is "V" (bfloat16's), since
    every op asks this of every input."""
    letter = t.dtype.kind
    return dtypes.kind(t.dtype) if letter == "V" else letter


def _check_dtype_kinds(fn: type, tensors) -> None:
    for t in tensors:
        if _kind(t) not in fn.dtype_kinds:
            name = op_name(fn)
            raise TypeError(
                f"{name}: got dtype {t.dtype}; {name} takes floating-point tensors (float32, "
                "float64; float16 where its kernels have it), as in PyTorch: convert with "
                ".float() or .double()"
                if fn.dtype_kinds == "f"
                else f"{name}: got dtype {t.dtype}; {name} takes dtype kinds {fn.dtype_kinds!r}"
            )


def _output_array(fn: type, out):
    """forward's result as an array (a Tensor gives its array); anything else is refused."""
    if type(out) is np.ndarray or isinstance(out, np.generic):  # the common case first
        return out
    if isinstance(out, GraphTensor):
        return out.data
    if hasattr(out, "shape") and hasattr(out, "dtype") and out.dtype.kind != "O":
        return out
    raise TypeError(
        f"{fn.__name__}.forward must return one array (NumPy or CuPy) or Tensor, "
        f"got {type(out).__name__}"
    )


def _check_float_dtypes(op: str, tensors):
    """The one floating-point dtype among the tensors (None if there is none); two refused."""
    floating = {t.dtype for t in tensors if _kind(t) == "f"}
    if len(floating) == 1:
        return floating.pop()
    if len(floating) > 1:
        names = sorted(str(d) for d in floating)
        raise TypeError(
            f"{op}: all floating-point tensors must share one dtype, got {names} (PyTorch would "
            "widen to the larger; minidl asks: convert one with .float() or .double())"
        )


def backward(root, grad, retain_graph: bool = False) -> None:
    """Send ``grad`` (d loss / d root) back through the graph; leaves accumulate into ``.grad``.

    As PyTorch does, each Node's saved arrays are released once its backward has run, so the
    activations of a training step are freed as backward goes; a second backward through the same
    graph then needs ``retain_graph=True`` the first time, and says so."""
    start = root._node if root._node is not None else root
    grads = {id(start): grad}  # d loss / d (each Node's output, or leaf), keyed by identity
    for item in reversed(_topological_order(start)):  # every node before its inputs
        dy = grads.pop(id(item), None)
        if dy is None:
            continue
        if isinstance(item, GraphTensor):  # a leaf: accumulate (never in place: dy may be shared)
            # dy has the leaf's shape, dtype and device by construction, so this skips the checks
            # the public ``grad`` setter makes for gradients assigned by hand
            total = dy if item._grad is None else item._grad.data + dy
            item._grad = item._new(total, False)
            continue
        for parent, dx in zip(item.inputs, _run_backward(item, dy, retain_graph)):
            if parent is None or dx is None:
                continue
            if isinstance(dx, GraphTensor):  # a backward written with Tensors, as in PyTorch
                dx = dx.data
            dx = dtypes.round_to_storage(dx, parent.dtype)  # NumPy may have widened it
            if tuple(dx.shape) != tuple(parent.shape):
                raise RuntimeError(
                    f"{item.fn.__name__}.backward returned a gradient of shape {dx.shape} "
                    f"for an input of shape {parent.shape}"
                )
            key = id(parent)
            grads[key] = dx if key not in grads else grads[key] + dx


def _topological_order(start) -> list:
    """Nodes and leaves reachable from ``start``, each after all of its inputs (depth first)."""
    order, seen = [], set()
    stack = [(start, False)]
    while stack:
        item, expanded = stack.pop()
        if expanded:
            order.append(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        stack.append((item, True))
        if isinstance(item, Node):
            for parent in item.inputs:
                if parent is not None and id(parent) not in seen:
                    stack.append((parent, False))
    return order


def _run_backward(node: Node, dy, retain_graph: bool) -> tuple:
    """One Node's backward: its inputs' gradients as a tuple; its saved arrays released after."""
    if node.fn.backward is Function.backward:
        raise NotImplementedError(
            f"{node.fn.__name__} has no backward(ctx, dy): define it as a @staticmethod "
            "returning d loss / d input for each input (None where there is none)"
        )
    if node.ctx is None:
        raise RuntimeError(
            f"backward: the graph through {op_name(node.fn)} was already used by a "
            "backward(), which released its saved arrays (as PyTorch does); pass "
            "retain_graph=True to that first backward() to go through the graph again"
        )
    versions.check_saved(node.saved_versions, op_name(node.fn))
    if _profile is None:
        input_grads = node.fn.backward(node.ctx, dy)
    else:
        start = _clock()
        input_grads = node.fn.backward(node.ctx, dy)
        _profile[node.fn.__name__][1] += _clock() - start
    if not retain_graph:
        node.ctx = None  # its saved arrays go now, not when the whole graph does
    return input_grads if isinstance(input_grads, tuple) else (input_grads,)
