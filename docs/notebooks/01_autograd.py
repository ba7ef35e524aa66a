# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Autograd from the ground up
#
# Training a network means computing d loss / d parameter for millions of parameters. Writing
# those derivatives by hand for every model is hopeless; writing them once per *operation* is
# easy. **Reverse-mode automatic differentiation** (autograd) does the rest:
#
# 1. while the forward pass runs, record every operation and its inputs: a graph;
# 2. walk that graph backwards from the loss, and at each operation apply the chain rule
#    locally: if `y = f(a, b)` and we already know `dL/dy`, then
#    `dL/da += dL/dy * df/da` and `dL/db += dL/dy * df/db`.
#
# The `+=` matters: when a value feeds two operations, its gradient is the **sum** of what comes
# back along each path (the multivariate chain rule). And an operation may only run its backward
# once *all* of its output's users have sent their gradient back: that is why the walk goes in
# **reverse topological order**.
#
# In this notebook we build a tiny scalar autograd (about 50 lines, in the spirit of Karpathy's
# micrograd), check it against finite differences, and then watch minidl's `Function`, `Node`
# and `backward` do exactly the same with arrays.

# %%
import inspect

import matplotlib.pyplot as plt
import numpy as np

import minidl as mdl
from minidl import autograd
from minidl.autograd import Function
from minidl.gradcheck import GradcheckError

# %% [markdown]
# ## A scalar autograd in 50 lines
#
# A `Value` holds a number, its gradient, the values it was computed from (`parents`) and a
# closure `backward_step` that pushes its own gradient to its parents. Each operation builds its
# output *and* that closure side by side: forward and backward of an op live in one place.
#
# | op | forward | local derivatives |
# |---|---|---|
# | `a + b` | `a + b` | `1`, `1` |
# | `a * b` | `a b` | `b`, `a` |
# | `a ** p` (constant p) | `a^p` | `p a^(p-1)` |
# | `exp(a)` | `e^a` | `e^a` |


# %%
class Value:
    def __init__(self, data, parents=(), op=""):
        self.data = float(data)
        self.grad = 0.0
        self.parents = parents
        self.op = op
        self.backward_step = lambda: None

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data + other.data, (self, other), "+")

        def backward_step():
            self.grad += out.grad  # d(a + b)/da = 1
            other.grad += out.grad  # d(a + b)/db = 1

        out.backward_step = backward_step
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        out = Value(self.data * other.data, (self, other), "*")

        def backward_step():
            self.grad += other.data * out.grad  # d(ab)/da = b
            other.grad += self.data * out.grad  # d(ab)/db = a

        out.backward_step = backward_step
        return out

    def __pow__(self, p):
        out = Value(self.data**p, (self,), f"**{p}")

        def backward_step():
            self.grad += p * self.data ** (p - 1) * out.grad

        out.backward_step = backward_step
        return out

    def exp(self):
        out = Value(np.exp(self.data), (self,), "exp")

        def backward_step():
            self.grad += out.data * out.grad  # d(e^a)/da = e^a, which is the output itself

        out.backward_step = backward_step
        return out

    def backward(self):
        # Depth-first search: a value is appended only after all of its parents, so the list is
        # a topological order, and reversed, every value comes before the values it was made from.
        order, seen = [], set()

        def visit(v):
            if id(v) not in seen:
                seen.add(id(v))
                for parent in v.parents:
                    visit(parent)
                order.append(v)

        visit(self)
        self.grad = 1.0  # dL/dL
        for v in reversed(order):
            v.backward_step()
        return order

    def __repr__(self):
        return f"Value({self.data:.6g}, grad={self.grad:.6g})"


# %% [markdown]
# Our running example uses `b` twice, so its gradient has two paths to add up:
#
# $$ L = (a\,b + b)^2 \qquad \frac{\partial L}{\partial a} = 2(ab + b)\,b \qquad
#    \frac{\partial L}{\partial b} = 2(ab + b)(a + 1) $$
#
# At a = 2, b = -3: ab + b = -9, so dL/da = 2(-9)(-3) = 54 and dL/db = 2(-9)(3) = -54.

# %%
a, b = Value(2.0), Value(-3.0)
L = (a * b + b) ** 2
order = L.backward()
print("L =", L.data, " dL/da =", a.grad, " dL/db =", b.grad)
print("backward visited:", [v.op or f"leaf {v.data:g}" for v in reversed(order)])
assert (a.grad, b.grad) == (54.0, -54.0)

# %% [markdown]
# ### Checking against finite differences
#
# The derivative is a limit; a **central difference** approximates it with an error of order
# eps², which in float64 with eps = 1e-6 leaves about 1e-9 of relative error:
#
# $$ \frac{\partial L}{\partial a} \approx \frac{L(a + \epsilon) - L(a - \epsilon)}{2\epsilon} $$


# %%
def f(a, b):
    return (a * b + b) ** 2


eps = 1e-6
numeric_a = (f(2.0 + eps, -3.0) - f(2.0 - eps, -3.0)) / (2 * eps)
numeric_b = (f(2.0, -3.0 + eps) - f(2.0, -3.0 - eps)) / (2 * eps)
error = max(abs(numeric_a - a.grad), abs(numeric_b - b.grad))
print(f"numeric: {numeric_a:.8f} {numeric_b:.8f}; max error against autograd: {error:.2e}")
assert error < 1e-6

# %% [markdown]
# ## The same expression in minidl
#
# minidl does this with arrays instead of floats. The pieces (all in `minidl/autograd.py`):
#
# - a **`Function`** is one op: `forward(ctx, *arrays)` returns the output array,
#   `backward(ctx, dy)` returns one gradient per input. `ctx.save(...)` is what forward keeps
#   for backward (our closures captured it implicitly; here it is explicit).
# - **`Function.apply(*tensors)`** runs forward on the tensors' arrays and, if any input requires a
#   gradient, attaches a **`Node`** to the output: the Function class, its `ctx`, and its
#   inputs (an input made by an op as that op's Node, a leaf as itself). That node is our
#   `backward_step` + `parents`.
# - **`backward(root, grad)`** sorts the graph topologically and calls each node's
#   `Function.backward` in reverse order, summing gradients that arrive at the same tensor.

# %%
a = mdl.tensor(2.0, requires_grad=True, dtype="float64")
b = mdl.tensor(-3.0, requires_grad=True, dtype="float64")
L = (a * b + b) ** 2

node = L._node
print("L was made by", node.fn.__name__, "from", len(node.inputs), "inputs")
print("the Pow node saved for backward:", node.ctx.saved)
add_node = node.inputs[0]  # an input made by an op is kept as that op's Node
print(
    "its first input was made by",
    add_node.fn.__name__,
    "from",
    [t.fn.__name__ if isinstance(t, autograd.Node) else "a leaf" for t in add_node.inputs],
)

# %% [markdown]
# Let us draw both graphs: the one our `Value`s built and the one minidl recorded. Each box is
# a value; an arrow goes from an input to the op that used it.


# %%
def draw_graph(ax, root, parents, label, title):
    """Lay out a graph by depth (leaves on the left, the root on the right) and draw it."""
    depth, nodes = {}, []

    def visit(v):
        if id(v) in depth:
            return depth[id(v)]
        d = 1 + max((visit(p) for p in parents(v)), default=-1)
        depth[id(v)] = d
        nodes.append(v)
        return d

    visit(root)
    rows = {}
    position = {}
    for v in nodes:
        d = depth[id(v)]
        position[id(v)] = (d, -rows.get(d, 0))
        rows[d] = rows.get(d, 0) + 1
    for v in nodes:
        for p in parents(v):
            (x0, y0), (x1, y1) = position[id(p)], position[id(v)]
            ax.annotate("", (x1 - 0.3, y1), (x0 + 0.3, y0), arrowprops={"arrowstyle": "->"})
    for v in nodes:
        x, y = position[id(v)]
        ax.text(
            x,
            y,
            label(v),
            ha="center",
            va="center",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "lightyellow" if parents(v) else "lightblue"},
        )
    ax.set_xlim(-0.6, max(depth.values()) + 0.6)
    ax.set_ylim(-max(rows.values()) + 0.4, 0.6)
    ax.set_title(title)
    ax.axis("off")


def node_parents(v):  # v: a Node, or a leaf Tensor
    return [p for p in v.inputs if p is not None] if isinstance(v, autograd.Node) else []


def node_label(v):
    if isinstance(v, autograd.Node):
        return f"{v.fn.__name__}\nshape {v.shape}"
    return f"leaf\n{v.data.item():g}"


va, vb = Value(2.0), Value(-3.0)
fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3))
draw_graph(
    left,
    (va * vb + vb) ** 2,
    lambda v: v.parents,
    lambda v: f"{v.op or 'leaf'}\n{v.data:g}",
    "our Value graph",
)
draw_graph(right, L._node, node_parents, node_label, "minidl's Node graph")
plt.show()

# %% [markdown]
# Same shape, with two differences. minidl's graph holds only what backward must reach: the
# Nodes of ops and the leaves that learn. The exponent 2 (made a constant tensor, which is never
# sent a gradient) is not in it, and no intermediate *value* is either: a Node keeps the op,
# what its forward saved and its output's shape, so an activation's array is freed as soon as no
# backward needs it. Here is the whole of minidl's backward walk; compare it with
# `Value.backward`:

# %%
print(inspect.getsource(autograd.backward))

# %%
L.backward()
print("minidl: dL/da =", a.grad.item(), " dL/db =", b.grad.item())
assert (a.grad.item(), b.grad.item()) == (54.0, -54.0)

# %% [markdown]
# ## Broadcasting is reduced back
#
# With arrays, `x + bias` broadcasts a bias of shape (4,) over a batch of shape (3, 4). In the
# forward pass each bias element was *used* 3 times, so, exactly as with `b` above, its gradient
# is the **sum** over those uses. Every binary op's backward therefore sums the gradient back down
# to the input's shape (`unbroadcast` in `minidl/ops/tensor_ops.py`).

# %%
x = mdl.tensor(np.arange(12.0).reshape(3, 4), requires_grad=True)
bias = mdl.tensor(np.array([1.0, -1.0, 2.0, 0.5]), requires_grad=True)
y = (x * bias).sum()
y.backward()
print("bias.grad =", bias.grad.numpy(), " (the column sums of x:", x.numpy().sum(axis=0), ")")
print("x.grad[0] =", x.grad.numpy()[0])
assert bias.grad.shape == (4,)
assert np.array_equal(bias.grad.numpy(), x.numpy().sum(axis=0))
assert np.array_equal(x.grad.numpy(), np.broadcast_to(bias.numpy(), (3, 4)))

# %% [markdown]
# ## Leaves accumulate
#
# A leaf's `.grad` is a running sum over every `backward()` since it was last cleared. That is
# what lets you add up gradients of several mini-batches; it is also why an optimizer loop calls
# `zero_grad()` before each backward.

# %%
w = mdl.tensor(3.0, requires_grad=True, dtype="float64")
for step in range(3):
    (w * w).backward()  # d(w^2)/dw = 2w = 6 each time
    print(f"after backward #{step + 1}: w.grad = {w.grad.item()}")
assert w.grad.item() == 18.0
w.zero_grad()
print("after zero_grad:", w.grad)

# %% [markdown]
# ## Your own Function, checked with gradcheck
#
# An op of your own is a `Function` subclass. Take softplus, a smooth ReLU:
#
# $$ y = \log(1 + e^x) \qquad \frac{dy}{dx} = \frac{1}{1 + e^{-x}} = \sigma(x) $$
#
# `np.logaddexp(0, x)` computes log(e^0 + e^x) without overflowing for large x.
#
# `minidl.gradcheck(fn, inputs)` compares the analytic gradient (one backward) with central
# differences for every input element, in float64. It returns True or raises with a report.


# %%
class Softplus(Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return np.logaddexp(0.0, x)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy / (1.0 + np.exp(-x))  # dy * sigmoid(x)


x = mdl.tensor(np.random.default_rng(0).standard_normal((4, 5)), requires_grad=True)
ok = mdl.gradcheck(lambda t: Softplus.apply(t), [x])
print("gradcheck(Softplus):", ok)
assert ok


# %% [markdown]
# A wrong derivative is caught. Here backward forgets the chain rule's `dy` factor, a classic:


# %%
class BrokenSoftplus(Softplus):
    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return np.ones_like(dy) / (1.0 + np.exp(-x))  # forgot to multiply by dy


try:
    mdl.gradcheck(lambda t: BrokenSoftplus.apply(t), [x])
    caught = False
except GradcheckError as err:
    caught = True
    print("gradcheck(BrokenSoftplus) raised:\n", err)
assert caught, "gradcheck should have caught the missing dy"

# %% [markdown]
# ## What backward keeps, and what it refuses
#
# `Value.exp`'s backward reads `out.data`: the output itself is what it keeps. minidl's ops keep
# arrays too (`ctx.save`), so a value changed in place between forward and backward would give a
# gradient computed from numbers the forward pass never saw. As PyTorch does, every tensor counts
# its writes in place, each op notes the count of every tensor whose array it kept, and backward
# refuses a changed one. A `clone()` is a copy to change instead:

# %%
w = mdl.tensor(np.array([0.0, 1.0]), requires_grad=True)
y = w.exp()  # exp keeps y for its backward
with mdl.no_grad():
    y *= 2.0  # y changed after exp kept it
try:
    y.sum().backward()
    refused = False
except RuntimeError as err:
    refused = True
    print(err)
assert refused
z = w.exp().clone()
z += 1.0  # in place on the copy: the graph now ends in this add, exp's own output is untouched
z.sum().backward()
print("d sum(exp(w) + 1) / dw =", w.grad.numpy())
assert np.allclose(w.grad.numpy(), np.exp([0.0, 1.0]))

# %% [markdown]
# **Read next:** `docs/autograd.md` traces one expression through minidl's engine, step by step;
# `minidl/autograd.py` is the whole engine, one file.
#
# ## Exercises
#
# 1. Add `tanh` to `Value` (d tanh(a)/da = 1 - tanh(a)²) and check `tanh(a * b) + a` against
#    central differences as above.
# 2. In `Value.backward`, replace `+=` by `=` in `__mul__`'s backward step. Which gradient of
#    `L = (a*b + b)**2` goes wrong, and why only that one?
# 3. Write a `Function` for `y = x * sigmoid(x)` (SiLU); derive `dy/dx`, pass `gradcheck`, then
#    plant a sign error and read gradcheck's report: which element is worst, and by how much?
