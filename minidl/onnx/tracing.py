"""Record one forward pass: every op it ran, on which tensors, with what parameters, in which
layer.

Every op of minidl goes through one door, ``Function.apply`` (``minidl/autograd.py``), and every
layer through another, ``Module.__call__`` (``minidl/nn/module.py``). While ``trace`` runs the
model once on an example input, both doors are replaced by versions that write down what passes:

    Call(fn=Conv2dFunction, args=(x, weight, bias), params={stride: (4, 4), padding: ...},
         output=y, module="features.conv1")

That list, in the order the ops ran, *is* the model's computation: ``minidl/onnx/exporter.py``
writes one or a few ONNX nodes per Call. It covers any forward (a Sequential, a model with its own
``forward``, arithmetic between layers), as ``torch.jit.trace`` does, with the same limits: the
graph is the path this input took (a Python ``if`` on a tensor's value is frozen), and a tensor
that no recorded op made, no parameter and not the input (made from NumPy inside forward, say)
is written into the file as a constant.

Why not walk the autograd graph that the forward records anyway? Its Nodes keep only what backward
needs (``Add`` keeps two shapes, not the constant it added; no Node keeps ``stride``), they exist
only when a gradient is wanted, and they keep no tensor, by design, so that activations are freed
early. The op's own call has everything, so this listens there instead.

Only the thread that called ``trace`` is recorded, and only the outermost op: an op whose forward
calls other ops (a forward written with Tensors) is one Call.

The Calls name values by their tensor, and a tensor object can hold several values in turn: an
in-place op (``out += identity``, ``ReLU(inplace=True)``, a write through a view, which remakes
the view's base too) is a third door, and a view taken again from its written base
(``minidl/versions.py``) is taken at the ``apply`` door, where the trace sees it. Either way
``_Recorder.renamed`` gives the Calls so far a stand-in (a copy of the old value) where they
name the tensor, and the tensor where they name the result that it now holds.
"""

from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

from minidl import autograd, versions
from minidl.autograd import Function
from minidl.inplace import InPlace
from minidl.nn.module import Module
from minidl.tensor import Tensor


class Call(NamedTuple):
    """One op the forward ran."""

    fn: type  # the Function: Conv2dFunction, Add, Reshape, ...
    args: tuple  # positional arguments as given: Tensors, arrays (BatchNorm's buffers), None
    params: dict  # keyword arguments: the op's attributes (stride, padding, dim, shape, ...)
    output: Tensor
    module: str  # dotted name of the innermost layer that ran it ("" for the model's own forward)
    layer: Module  # that layer


class _Recorder:
    """What the two replaced doors share while a trace runs."""

    def __init__(self, model: Module):
        self.names = {id(m): name for name, m in model.named_modules()}
        self.layers = [model]  # the stack of layers running now, innermost last
        self.calls: list[Call] = []
        self.depth = 0  # > 0 while an op's forward runs: ops inside it are part of it
        self.thread = threading.get_ident()

    def listening(self) -> bool:
        return self.depth == 0 and threading.get_ident() == self.thread

    def record(self, fn: type, args: tuple, params: dict, output) -> None:
        layer = self.layers[-1]
        self.calls.append(Call(fn, args, params, output, self.names.get(id(layer), "?"), layer))

    def renamed(self, tensor: Tensor, before: Tensor, result: Tensor) -> None:
        """``tensor`` now holds ``result``'s value: in the Calls so far, ``before`` (a stand-in
        for its old value) takes the tensor's place, and the tensor takes ``result``'s."""

        def name(value):
            return before if value is tensor else tensor if value is result else value

        for i, c in enumerate(self.calls):
            self.calls[i] = c._replace(args=tuple(map(name, c.args)), output=name(c.output))


@contextlib.contextmanager
def _listening_at_the_doors(recorder: _Recorder):
    """Replace ``Function.apply`` and ``Module.__call__`` by recording versions; restore them."""
    original_apply = Function.__dict__["apply"]  # the classmethod object itself
    original_call = Module.__call__
    original_in_place = InPlace._in_place

    def apply(cls, *args, **params):
        if not recorder.listening():
            return original_apply.__func__(cls, *args, **params)
        for t in args:
            if isinstance(t, Tensor) and versions.is_stale(t):  # taken again here, recorded
                before = t._new(t.data.copy(), False)
                recorder.renamed(t, before, versions.retake_view(t))
        recorder.depth += 1
        try:
            output = original_apply.__func__(cls, *args, **params)
        finally:
            recorder.depth -= 1
        recorder.record(cls, args, params, output)
        return output

    def call(module, *args, **kwargs):
        if not recorder.listening():
            return original_call(module, *args, **kwargs)
        recorder.layers.append(module)
        try:
            return original_call(module, *args, **kwargs)
        finally:
            recorder.layers.pop()

    def in_place(tensor, op, *args):
        if not recorder.listening():
            return original_in_place(tensor, op, *args)
        before = tensor._new(tensor.data.copy(), False)
        made = []  # the result the tensor takes the value of

        def op_keeping_its_result(t, *a):
            made.append(op(t, *a))
            return made[-1]

        out = original_in_place(tensor, op_keeping_its_result, *args)
        recorder.renamed(tensor, before, made[0])
        return out

    Function.apply = classmethod(apply)
    Module.__call__ = call
    InPlace._in_place = in_place
    try:
        yield
    finally:
        Function.apply = original_apply
        Module.__call__ = original_call
        InPlace._in_place = original_in_place


def trace(model: Module, x: Tensor) -> tuple[list[Call], Tensor, object]:
    """Run ``model(x)`` once; return (the Calls in the order they ran, the input tensor they
    start from, the model's output).

    Gradients stay on during the trace, with ``x`` as a leaf that wants one: every tensor made
    from x is then part of a graph, as the ops of a training forward are (an in-place write into
    x itself is refused, as PyTorch refuses one into a leaf that wants a gradient)."""
    recorder = _Recorder(model)
    x = x.detach().requires_grad_(x.dtype.kind == "f")  # the caller's tensor is left as it was
    with _listening_at_the_doors(recorder), _grad_enabled():
        output = model(x)
    return recorder.calls, x, output


@contextlib.contextmanager
def _grad_enabled():
    """Gradients on while the block runs, even inside ``no_grad()`` (the reverse of no_grad)."""
    previous = autograd._grad_enabled
    autograd._grad_enabled = True
    try:
        yield
    finally:
        autograd._grad_enabled = previous
