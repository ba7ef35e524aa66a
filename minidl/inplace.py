"""A Tensor's in-place methods, and its conversion to one Python value (mixed into Tensor).

In place: ``x += y``, ``-=``, ``*=``, ``/=`` (and PyTorch's ``add_``, ``sub_``, ``mul_``,
``div_``), ``x[index] = value``, ``zero_()``, ``fill_()`` and ``copy_()`` write into the tensor's
own array, so every holder of the tensor (a Module, an optimizer) sees the new values. Without
these methods Python would rebind the name to a new tensor, and a Module would lose its Parameter.

One rule makes them: an in-place op is the out-of-place op (``x + y``, recorded for backward as
any op), its values written into the tensor's own array, and the tensor taking the result's place
in the graph (PyTorch's "rebase"). So ``out += identity`` in a residual block, or ``buf += w``
into a tensor that needed no gradient, carry their gradients as PyTorch's do. The rules are
PyTorch's:

- the result must keep the tensor's shape and dtype (``int_tensor += 0.5`` is refused, as is a
  result that broadcasts to a larger shape);
- a leaf that requires grad (a weight) may be changed in place only under ``no_grad()``: outside
  it, PyTorch's "a leaf Variable that requires grad is being used in an in-place operation.";
- each write counts in the tensor's version (``_version``, shared with ``detach()``'s tensor,
  which holds the same array), and backward refuses to use an array an op saved for it that was
  changed since: PyTorch's "modified by an inplace operation" (``minidl/autograd.py``):
  ``y = x.exp(); y += 1`` cannot go back through exp, which saved y. An optimizer's step counts
  as a write, and a 16-bit weight's float32 master copy is made anew after a write it did not
  make (``minidl/optim.py``).

Copies and aliases: ``clone()`` is a copy with an array of its own, differentiable (change the
copy, and the graph keeps the original); ``detach()`` is the same array outside the graph. A view
(reshape, permute, basic indexing: NumPy views of one array) shares its base's version counter,
as PyTorch's views do, and the two follow each other in the graph as in PyTorch: a write into a
view makes the base anew with the view's part replaced (PyTorch's CopySlices, here
``_write_through_view``: ``x[:, 0] += w`` carries w's gradient into x), and a view of a base
written since is taken again before an op uses it (``minidl/versions.py``).

One value: ``bool(t)``, ``float(t)``, ``int(t)`` and ``f"{t:.3f}"`` read a tensor of one element
(``if loss < 0.5:``, ``print(f"{loss:.4f}")``); any other tensor is refused as PyTorch refuses it.
"""

from __future__ import annotations

import numpy as np

from minidl import autograd, backend, promotion
from minidl.ops.tensor_ops import Clone, CopyInto, SetItem


class InPlace:
    """The in-place operators of Tensor (``self.data`` is written, never rebound), and the two
    ways to get another tensor of the same values: a copy, or the same array."""

    def clone(self):
        """A copy of the values in an array of its own; the gradient flows back to self."""
        return Clone.apply(self)

    def detach(self):
        """The same values (the same array, and version counter), cut from the graph."""
        out = self._new(self.data, False)
        out._versions = self._version_counter()
        return out

    def _in_place(self, op, *args):
        """self = op(self, *args), in self's own array (the module docstring's one rule)."""
        if autograd.is_grad_enabled() and self.requires_grad and self._node is None:
            raise RuntimeError(
                "a leaf Variable that requires grad is being used in an in-place operation."
            )
        result = op(self, *args)
        if result.shape != self.shape:
            raise RuntimeError(
                f"output with shape {list(self.shape)} doesn't match the broadcast shape "
                f"{list(result.shape)}"
            )
        if promotion.category(result.dtype) > promotion.category(self.dtype):
            raise RuntimeError(
                f"result type {result.dtype} can't be cast to the desired output type {self.dtype}"
            )
        if self._view is not None and (self.requires_grad or result._node is not None):
            return _write_through_view(self, result)
        if result._node is not None:
            _keep_what_the_op_saved_of(result._node, self)
        self.data[...] = result.data
        self._bump_version()
        if result._node is not None:  # self is now the op's output in the graph
            self._node, self.requires_grad = result._node, True
        return self

    def __iadd__(self, other):
        return self._in_place(type(self).__add__, other)

    def __isub__(self, other):
        return self._in_place(type(self).__sub__, other)

    def __imul__(self, other):
        return self._in_place(type(self).__mul__, other)

    def __itruediv__(self, other):
        return self._in_place(type(self).__truediv__, other)

    # PyTorch's method names for the same operators (``p.add_(g, alpha=-lr)``)
    def add_(self, other, *, alpha=1):
        return self._in_place(lambda t, o: t + (o if alpha == 1 else o * alpha), other)

    def sub_(self, other, *, alpha=1):
        return self._in_place(lambda t, o: t - (o if alpha == 1 else o * alpha), other)

    def mul_(self, other):
        return self.__imul__(other)

    def div_(self, other):
        return self.__itruediv__(other)

    def __setitem__(self, index, value):
        """``x[index] = value`` with PyTorch's indexing (minidl/indexing.py), an in-place op:
        value's gradient flows back from the written places."""
        if isinstance(index, autograd.GraphTensor):
            index = index.data
        elif isinstance(index, tuple):
            index = tuple(i.data if isinstance(i, autograd.GraphTensor) else i for i in index)
        self._in_place(lambda t, v: SetItem.apply(t, v, index=index), self._as_source(value))

    def zero_(self):
        return self.fill_(0)

    def fill_(self, value):
        return self._in_place(CopyInto.apply, value)

    def copy_(self, source):
        """Copy source's values (broadcast, cast to self's dtype, moved to self's device); the
        gradient flows back to source, as PyTorch's copy_ sends it."""
        return self._in_place(CopyInto.apply, self._as_source(source))

    def _as_source(self, value):
        """A value to write into self: a Tensor moved to self's device and cast to its dtype
        (both differentiable), an array moved; a Python number as it is."""
        if isinstance(value, autograd.GraphTensor):
            value = value.to(self.device) if value.device != self.device else value
            return value.astype(self.dtype) if value.dtype != self.dtype else value
        return value if isinstance(value, (int, float, bool)) else backend.move(value, self.device)


# How a view's base is made again with the view's new values: PyTorch's CopySlices, for the
# views minidl's ops make (base, the view's new values, the view op's params -> the new base)
_REBUILD = {
    "Reshape": lambda base, values, params: values.reshape(base.shape),
    "Permute": lambda base, values, params: values.permute(tuple(np.argsort(params["dims"]))),
    "GetItem": lambda base, values, params: SetItem.apply(base, values, index=params["index"]),
}


def _write_through_view(view, result):
    """``view op= ...`` where view is a view of base inside a graph: base becomes itself with the
    view's part replaced by result (written by base's own in-place rule, so its leaf check, its
    graph and its own base, if it is a view too, follow), and the view takes result's place."""
    base, fn, params, _ = view._view
    if fn.__name__ not in _REBUILD:
        raise RuntimeError(
            f"an in-place write into the view made by {autograd.op_name(fn)} of a tensor in a "
            "graph is not supported; write it out of place"
        )
    if result._node is not None:
        _keep_what_the_op_saved_of(result._node, view)
    whole = _REBUILD[fn.__name__](base, result, params)
    base._in_place(lambda _: whole)  # writes the view's values too: they share one array
    view._node, view.requires_grad = result._node, result.requires_grad
    view._view = (base, fn, params, view._version)
    return view


def _keep_what_the_op_saved_of(node, tensor) -> None:
    """The op that is about to become ``tensor`` saved arrays for its backward; those that are
    ``tensor``'s own array (``x *= w`` saves x for w's gradient) or a view of it are copied
    before the array is overwritten, and no longer watched for changes: the op's backward reads
    the values it was given, as PyTorch's in-place ops keep their "original self"."""
    array = tensor.data

    def of_tensor(saved) -> bool:
        return saved is array or getattr(saved, "base", None) is array

    if any(of_tensor(saved) for saved in node.ctx.saved):
        node.ctx.saved = tuple(v.copy() if of_tensor(v) else v for v in node.ctx.saved)
        counter = tensor._versions
        node.saved_versions = tuple(e for e in node.saved_versions if e[0] is not counter)


class OneValue:
    """item(), and Python's bool(), float(), int() and format() of a one-element tensor."""

    def item(self):
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.numpy().reshape(()).item()

    def __bool__(self) -> bool:
        if self.data.size != 1:
            amount = "no values" if self.data.size == 0 else "more than one value"
            raise RuntimeError(f"Boolean value of Tensor with {amount} is ambiguous")
        return bool(self.item())

    def _one_value(self):
        if self.data.size != 1:
            raise ValueError(
                f"only one element tensors can be converted to Python scalars (shape {self.shape})"
            )
        return self.item()

    def __float__(self) -> float:
        return float(self._one_value())

    def __int__(self) -> int:
        return int(self._one_value())

    def __format__(self, spec: str) -> str:
        # As PyTorch: a 0-d tensor formats its value; any other takes only the empty spec.
        if self.ndim == 0:
            return format(self.item(), spec)
        return object.__format__(self, spec)
