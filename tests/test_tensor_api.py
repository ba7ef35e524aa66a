"""PyTorch's everyday tensor API (minidl/tensor_api.py, minidl/ops/pointwise.py, shape_ops.py,
minidl/nn/simple.py): values and gradients against torch in float64, a float64 gradcheck for
every differentiable op, the dtype rules and each error message."""

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn
from tests.helpers import distinct, random

# name -> (input shapes, the op written for both libraries); distinct values (no ties) for the
# reductions, and values kept off the kinks (abs at 0, clamp at its bounds) by the random draw.
CASES = {
    "abs": ([(3, 4)], lambda x: x.abs()),
    "sqrt": ([(3, 4)], lambda x: (x * x + 0.5).sqrt()),
    "sigmoid": ([(3, 4)], lambda x: (x * 3).sigmoid()),
    "tanh": ([(3, 4)], lambda x: x.tanh()),
    "clamp": ([(3, 4)], lambda x: x.clamp(min=-0.5, max=0.7)),
    "clamp-min-only": ([(3, 4)], lambda x: x.clamp(min=0.1)),
    "clamp-max-only": ([(3, 4)], lambda x: x.clamp(max=0.1)),
    "min-all": ([(3, 4)], lambda x: x.min() * x),
    "min-dim": ([(3, 4)], lambda x: x.min(dim=1)),  # torch: .values (minidl gives no indices)
    "min-dim-keepdim": ([(3, 4)], lambda x: x.min(dim=0, keepdim=True) * x),
    "softmax": ([(3, 4)], lambda x: x.softmax(dim=1)),
    "softmax-dim0": ([(3, 4)], lambda x: x.softmax(0)),
    "log_softmax": ([(3, 4)], lambda x: x.log_softmax(dim=-1)),
    "t": ([(3, 4)], lambda x: x.t()),
    "t-1d": ([(4,)], lambda x: x.t()),
    "unsqueeze": ([(3, 4)], lambda x: x.unsqueeze(1) * x.unsqueeze(-1).unsqueeze(0)),
    "squeeze-all": ([(3, 1, 4, 1)], lambda x: x.squeeze()),
    "squeeze-dim": ([(3, 1, 4, 1)], lambda x: x.squeeze(-1)),
    "squeeze-kept": ([(3, 1, 4, 1)], lambda x: x.squeeze(0)),
    "expand": ([(3, 1)], lambda x: x.expand(2, 3, 4)),
    "expand-minus-one": ([(3, 1)], lambda x: x.expand(-1, 5)),
    "var": ([(3, 4)], lambda x: x.var()),
    "var-dim": ([(3, 4)], lambda x: x.var(dim=1)),
    "var-biased-keepdim": ([(3, 4)], lambda x: x.var(0, False, True)),
    "var-correction": ([(3, 4)], lambda x: x.var(dim=(0, 1), correction=2)),
    "std": ([(3, 4)], lambda x: x.std()),
    "std-dim": ([(3, 4)], lambda x: x.std(dim=0, keepdim=True)),
    "std-biased": ([(3, 4)], lambda x: x.std(1, unbiased=False)),
}


def upstream(shape):
    """The same seeded upstream gradient for minidl and torch."""
    return np.random.default_rng(7).standard_normal(shape)


def run(fn, arrays, tensor, dy):
    """fn's output and the gradient of each input, for the upstream gradient dy."""
    xs = [tensor(a) for a in arrays]
    y = fn(*xs)
    y.backward(dy(tuple(y.shape)))
    return y, [x.grad for x in xs]


# torch.min(dim) gives (values, indices); minidl's min gives the values, as its max does
TORCH_ONLY = {
    "min-dim": lambda x: x.min(dim=1).values,
    "min-dim-keepdim": lambda x: x.min(dim=0, keepdim=True).values * x,
}


def minidl_and_torch(fn, arrays, torch_fn=None):
    torch = pytest.importorskip("torch")
    dy = upstream
    y, grads = run(fn, arrays, lambda a: mdl.tensor(a, requires_grad=True), dy)
    y_t, grads_t = run(
        torch_fn or fn,
        arrays,
        lambda a: torch.tensor(a, requires_grad=True),
        lambda s: torch.tensor(dy(s)),
    )
    assert y.shape == tuple(y_t.shape)
    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, g_t in zip(grads, grads_t):
        np.testing.assert_allclose(g.numpy(), g_t.numpy(), rtol=1e-10, atol=1e-12)


def arrays_for(shapes):
    return [distinct(s, i) for i, s in enumerate(shapes)]


@pytest.mark.parametrize("name", CASES)
def test_op_matches_torch(name):
    shapes, fn = CASES[name]
    minidl_and_torch(fn, arrays_for(shapes), TORCH_ONLY.get(name))


@pytest.mark.parametrize("name", CASES)
def test_op_gradcheck(name):
    shapes, fn = CASES[name]
    inputs = [mdl.tensor(a, requires_grad=True) for a in arrays_for(shapes)]
    assert mdl.gradcheck(fn, inputs)


JOIN = {
    "cat-dim0": (lambda a, b, c: mdl.cat([a, b, c]), lambda torch, a, b, c: torch.cat([a, b, c])),
    "cat-dim1": (
        lambda a, b, c: mdl.cat((a, b, c), dim=1),
        lambda torch, a, b, c: torch.cat((a, b, c), dim=1),
    ),
    "stack-dim0": (
        lambda a, b, c: mdl.stack([a, b, c]),
        lambda torch, a, b, c: torch.stack([a, b, c]),
    ),
    "stack-dim-last": (
        lambda a, b, c: mdl.stack([a, b, c], dim=-1),
        lambda torch, a, b, c: torch.stack([a, b, c], dim=-1),
    ),
}
JOIN_SHAPES = {"cat-dim0": [(2, 3), (1, 3), (4, 3)], "cat-dim1": [(2, 3), (2, 1), (2, 2)]}


@pytest.mark.parametrize("name", JOIN)
def test_cat_and_stack_split_the_gradient_back(name):
    torch = pytest.importorskip("torch")
    ours, theirs = JOIN[name]
    arrays = arrays_for(JOIN_SHAPES.get(name, [(2, 3)] * 3))
    dy = upstream
    y, grads = run(ours, arrays, lambda a: mdl.tensor(a, requires_grad=True), dy)
    y_t, grads_t = run(
        lambda *xs: theirs(torch, *xs),
        arrays,
        lambda a: torch.tensor(a, requires_grad=True),
        lambda s: torch.tensor(dy(s)),
    )
    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), rtol=1e-10)
    for g, g_t in zip(grads, grads_t):
        np.testing.assert_allclose(g.numpy(), g_t.numpy(), rtol=1e-10)
    assert mdl.gradcheck(ours, [mdl.tensor(a, requires_grad=True) for a in arrays])


def test_clamp_gradient_passes_at_the_bounds_and_not_outside():
    torch = pytest.importorskip("torch")
    values = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])
    x = mdl.tensor(values, requires_grad=True)
    x.clamp(-1.0, 1.0).sum().backward()
    x_t = torch.tensor(values, requires_grad=True)
    x_t.clamp(-1.0, 1.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 1.0, 1.0, 0.0])
    np.testing.assert_array_equal(x.grad.numpy(), x_t.grad.numpy())
    # min > max: every value is max, no gradient passes (PyTorch's rule)
    x = mdl.tensor(values, requires_grad=True)
    y = x.clamp(min=1.0, max=-1.0)
    y.sum().backward()
    np.testing.assert_array_equal(y.numpy(), torch.tensor(values).clamp(1.0, -1.0).numpy())
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros(5))


def test_min_ties_share_the_gradient_as_max_does():
    x = mdl.tensor(np.array([1.0, 3.0, 1.0]), requires_grad=True)
    x.min().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.5, 0.0, 0.5])


def test_eq_ne_lt_le_gt_ge_are_the_operators():
    a = mdl.tensor([1.0, 2.0, 3.0])
    for name, expected in [
        ("eq", [False, True, False]), ("ne", [True, False, True]), ("lt", [True, False, False]),
        ("le", [True, True, False]), ("gt", [False, False, True]), ("ge", [False, True, True]),
    ]:  # fmt: skip
        result = getattr(a, name)(2.0)
        assert result.dtype == np.bool_
        np.testing.assert_array_equal(result.numpy(), expected, err_msg=name)
    np.testing.assert_array_equal(a.eq(mdl.tensor([1.0, 0.0, 3.0])).numpy(), [True, False, True])


@pytest.mark.parametrize(
    "args, dtype, values",
    [
        ((5,), np.int64, [0, 1, 2, 3, 4]),
        ((2, 8, 3), np.int64, [2, 5]),
        ((5, 0, -2), np.int64, [5, 3, 1]),
        ((0.5, 2), np.float32, [0.5, 1.5]),
        ((0, 1, 0.25), np.float32, [0.0, 0.25, 0.5, 0.75]),
    ],
)
def test_arange_values_and_pytorchs_dtype_rule(args, dtype, values):
    x = mdl.arange(*args)
    assert x.dtype == dtype
    np.testing.assert_array_equal(x.numpy(), values)


def test_creation_functions_and_their_dtypes():
    assert mdl.ones(2, 3).shape == (2, 3) and mdl.ones((2, 3)).dtype == np.float32
    np.testing.assert_array_equal(mdl.ones(2).numpy(), [1.0, 1.0])
    assert mdl.ones(2, dtype="float64").dtype == np.float64
    assert mdl.full((2,), 3).dtype == np.int64 and mdl.full((2,), 3.5).dtype == np.float32
    assert mdl.full((2,), True).dtype == np.bool_
    np.testing.assert_array_equal(mdl.full((2, 2), 7.0).numpy(), np.full((2, 2), 7.0))
    x = mdl.tensor(np.arange(6).reshape(2, 3))
    z, o = mdl.zeros_like(x), mdl.ones_like(x, dtype="float64")
    assert (z.shape, z.dtype, o.dtype) == ((2, 3), np.int64, np.float64)
    np.testing.assert_array_equal(o.numpy(), np.ones((2, 3)))
    assert mdl.ones_like(x, requires_grad=True, dtype="float32").requires_grad


def test_integer_inputs_become_float32_as_in_pytorch():
    x = mdl.tensor([1, 4, 9])
    assert x.sqrt().dtype == np.float32 and x.sigmoid().dtype == np.float32
    assert x.abs().dtype == np.int64 and x.clamp(min=2).dtype == np.int64
    assert x.clamp(min=2.5).dtype == np.float32
    assert mdl.cat([x, mdl.tensor([0.5])]).dtype == np.float32


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: mdl.cat([]), RuntimeError, "cat: expected a non-empty list"),
        (lambda: mdl.stack([]), RuntimeError, "stack: expected a non-empty list"),
        (
            lambda: mdl.cat([mdl.ones(2, 3), mdl.ones(2, 4)]),
            RuntimeError,
            r"cat: tensors\[1\] has shape \(2, 4\), which does not match tensors\[0\]'s \(2, 3\)",
        ),
        (
            lambda: mdl.stack([mdl.ones(2, 3), mdl.ones(2, 3), mdl.ones(3, 2)]),
            RuntimeError,
            r"stack: .* tensors\[2\] has shape \(3, 2\) and tensors\[0\] has \(2, 3\)",
        ),
        (lambda: mdl.cat([mdl.ones(2), [1.0]]), TypeError, r"tensors\[1\] must be a Tensor"),
        (lambda: mdl.cat(mdl.ones(2)), TypeError, "cat: tensors must be a list or tuple"),
        (lambda: mdl.cat([mdl.tensor(1.0)]), RuntimeError, "zero-dimensional"),
        (lambda: mdl.cat([mdl.ones(2)], dim=1), IndexError, "Dimension out of range"),
        (lambda: mdl.ones(2, 3, 4).t(), RuntimeError, "t\\(\\) expects a tensor with <= 2"),
        (lambda: mdl.ones(3).clamp(), RuntimeError, "At least one of 'min' or 'max'"),
        (
            lambda: mdl.ones(2, 3).expand(2, 4),
            RuntimeError,
            r"\(4\) must match the existing size \(3\)",
        ),
        (lambda: mdl.ones(2, 3).expand(3), RuntimeError, "number of sizes provided"),
        (lambda: mdl.ones(3).expand(-1, 3), RuntimeError, "leading, non-existing dimension"),
        (lambda: mdl.ones(3).unsqueeze(2), IndexError, "Dimension out of range"),
        (lambda: mdl.tensor([1, 2]).softmax(0), TypeError, "floating-point"),
        (lambda: mdl.arange(0, 5, 0), RuntimeError, "step must be nonzero"),
        (lambda: mdl.arange(5, 0, 1), RuntimeError, "inconsistent with step sign"),
        (lambda: F.mse_loss(mdl.ones(2), mdl.ones(2), "avg"), ValueError, "reduction must be"),
        (lambda: nn.Softmax()(mdl.ones(2)), TypeError, r"nn.Softmax\(dim=1\)"),
        (lambda: mdl.ones(0).min(), IndexError, "min: cannot reduce over a dimension of size 0"),
        (
            lambda: mdl.cat([mdl.ones(2), mdl.ones(2).double()]),
            (TypeError, ValueError, RuntimeError),
            "float32.*float64|float64.*float32",
        ),
    ],
)
def test_error_messages(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_cat_refuses_tensors_on_two_devices_naming_the_argument():
    cpu = mdl.ones(2)
    other = mdl.ones(2)
    other.device = "cuda"  # only the label: the check runs before any array is touched
    with pytest.raises(RuntimeError, match=r"tensors\[1\] is on 'cuda', but tensors\[0\] is on"):
        mdl.cat([cpu, other])
    with pytest.raises(RuntimeError, match=r"stack: tensors\[1\] is on 'cuda'"):
        mdl.stack([cpu, other])


LAYERS = {
    "Sigmoid": (lambda nn: nn.Sigmoid(), [(3, 4)]),
    "Tanh": (lambda nn: nn.Tanh(), [(3, 4)]),
    "Softmax": (lambda nn: nn.Softmax(dim=1), [(3, 4)]),
    "LogSoftmax": (lambda nn: nn.LogSoftmax(dim=0), [(3, 4)]),
    "Identity": (lambda nn: nn.Identity(54, unused="x"), [(3, 4)]),
    "MSELoss": (lambda nn: nn.MSELoss(), [(3, 4), (3, 4)]),
    "MSELoss-sum": (lambda nn: nn.MSELoss(reduction="sum"), [(3, 4), (3, 4)]),
    "MSELoss-none": (lambda nn: nn.MSELoss(reduction="none"), [(3, 4), (3, 4)]),
}


@pytest.mark.parametrize("name", LAYERS)
def test_layers_match_torch(name):
    torch = pytest.importorskip("torch")
    make, shapes = LAYERS[name]
    arrays = arrays_for(shapes)
    ours, theirs = make(nn), make(torch.nn)
    dy = upstream
    y, grads = run(ours, arrays, lambda a: mdl.tensor(a, requires_grad=True), dy)
    y_t, grads_t = run(
        theirs, arrays, lambda a: torch.tensor(a, requires_grad=True), lambda s: torch.tensor(dy(s))
    )
    np.testing.assert_allclose(y.numpy(), y_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    for g, g_t in zip(grads, grads_t):
        np.testing.assert_allclose(g.numpy(), g_t.numpy(), rtol=1e-10, atol=1e-12)
    assert mdl.gradcheck(ours, [mdl.tensor(a, requires_grad=True) for a in arrays])


def test_mse_loss_is_the_mean_squared_error():
    x = mdl.tensor(np.array([1.0, 2.0, 4.0]), requires_grad=True)
    loss = F.mse_loss(x, mdl.tensor(np.array([1.0, 0.0, 1.0])))
    assert loss.item() == pytest.approx((0 + 4 + 9) / 3)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 4 / 3, 2.0])


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2}, {"reduction": "sum"}, {"reduction": "none"},
     {"ignore_index": 1}, {"weight": [1.0, 2.0, 0.5]}],
)  # fmt: skip
def test_cross_entropy_loss_passes_its_options_through(options):
    torch = pytest.importorskip("torch")
    logits, target = random((5, 3)), np.array([0, 1, 2, 1, 0])
    ours = {k: mdl.tensor(np.array(v)) if k == "weight" else v for k, v in options.items()}
    theirs = {k: torch.tensor(v, dtype=torch.float64) if k == "weight" else v
              for k, v in options.items()}  # fmt: skip
    x = mdl.tensor(logits, requires_grad=True)
    loss = nn.CrossEntropyLoss(**ours)(x, target)
    x_t = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.CrossEntropyLoss(**theirs)(x_t, torch.tensor(target))
    np.testing.assert_allclose(loss.numpy(), loss_t.detach().numpy(), rtol=1e-10)
    loss.sum().backward()
    loss_t.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    if "weight" in options:
        assert "weight" in dict(nn.CrossEntropyLoss(**ours).named_buffers())


def test_expand_is_a_view_and_std_of_one_value_is_nan_as_in_pytorch():
    x = mdl.tensor(np.array([[1.0], [2.0]]))
    assert x.expand(2, 3).shape == (2, 3)
    assert np.isnan(mdl.tensor([3.0]).var().item())
    assert np.isinf(mdl.tensor([1.0, 2.0]).var(correction=2).item())
