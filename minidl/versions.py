"""PyTorch's version counter and views: what in-place writes need from the graph.

Every tensor counts the writes into its values (in-place operators, ``load_state_dict``, an
optimizer's step) in a ``Version`` shared by the tensors that hold one array: ``x`` and
``x.detach()``, and a view and its base. Two rules use it:

- **Saved values.** An op that saved a tensor's array for its backward notes the count then
  (``saved_versions``); backward refuses to run if it moved (``check_saved``): the gradient would
  be computed from values forward never saw. PyTorch's "modified by an inplace operation".
- **Views.** An op whose output is a view of an input's array (reshape, permute, basic
  indexing) marks it (``mark_view``): the view remembers its base, the op and its params. A write
  into the base changes the view's values too (one array), so a view whose count moved is taken
  again from its base before an op uses it (``retake_view``, as PyTorch regenerates a view's
  grad_fn); a write into a view makes the base anew (``minidl/inplace.py``).

``minidl/autograd.py`` calls these from ``Function.apply`` and the backward pass.
"""

from __future__ import annotations


class Version:
    """A tensor's version counter: how many times its array was written in place."""

    __slots__ = ("count",)

    def __init__(self):
        self.count = 0


def saved_versions(saved: tuple, tensors) -> tuple:
    """(version counter, its count now) for each of ``tensors`` whose own array is in ``saved``
    (or is the base of a saved view): the arrays whose later change in place would make backward
    compute from values forward never saw. A saved copy (a float32 copy of 16-bit data, say)
    cannot change that way, and is not watched."""
    ids = set()  # of the saved arrays and of the arrays they view (every op runs this: kept lean)
    for a in saved:
        base = getattr(a, "base", False)  # False: not an array (a shape, a dtype, a number)
        if base is not False:
            ids.add(id(a))
            if base is not None:
                ids.add(id(base))
    if not ids:
        return ()
    return tuple((t._version_counter(), t._version) for t in tensors if id(t.data) in ids)


def check_saved(watched: tuple, op: str) -> None:
    """Refuse a backward whose saved arrays were changed in place since forward (PyTorch's
    "modified by an inplace operation"): its gradient would be a wrong number, silently."""
    for counter, count in watched:
        if counter.count != count:
            raise RuntimeError(
                f"backward: one of the tensors {op} saved for its gradient was modified by an "
                f"inplace operation (it is at version {counter.count}; expected version {count}, "
                "its version at the forward pass). Change it after backward(), or change a copy "
                "(x = x.clone())"
            )


def mark_view(result, tensors, fn: type, params: dict) -> None:
    """An op whose output is a view of an input's array (reshape, permute, basic indexing): the
    two share the input's version counter, as PyTorch's views do, and the output keeps where it
    comes from (``_view``: its base, the op, its params, the count it is in step with)."""
    owner = result.data.base
    for t in tensors:
        if owner is t.data or owner is t.data.base:
            result._versions = t._version_counter()
            result._view = (t, fn, params, result._versions.count)
            return


def is_stale(tensor) -> bool:
    """A view whose base (or the view itself) was written since it was last in step."""
    return tensor._view is not None and tensor._view[3] != tensor._versions.count


def retake_view(view):
    """A stale view holds the new values (one array) but the old values' place in the graph:
    take it again from the base, as PyTorch regenerates a view's grad_fn. Returns the new view
    tensor it took its place from."""
    base, fn, params, _ = view._view
    fresh = fn.apply(base, **params)
    view._node, view.requires_grad = fresh._node, fresh.requires_grad
    view._view = (base, fn, params, view._versions.count)
    return fresh
