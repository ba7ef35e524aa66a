"""Autograd and tensor math."""

import numpy as np
import pytest

import minidl as mdl
from tests.helpers import random


def grad_of(fn, *arrays):
    ts = [mdl.tensor(a, requires_grad=True) for a in arrays]
    fn(*ts).backward()
    return [t.grad.numpy() for t in ts]


def test_broadcasting_gradients_are_reduced_to_the_input_shape():
    a, b = random((3, 4)), random((4,), 1)
    ga, gb = grad_of(lambda a, b: (a * b + b).sum(), a, b)
    np.testing.assert_allclose(ga, np.broadcast_to(b, (3, 4)))
    np.testing.assert_allclose(gb, a.sum(0) + 3)
    c = random((3, 1), 2)
    (gc,) = grad_of(lambda c: (c - mdl.tensor(a)).sum(), c)
    np.testing.assert_allclose(gc, np.full((3, 1), 4.0))


def test_a_node_used_twice_gets_both_contributions():
    (g,) = grad_of(lambda x: (x * x).sum(), np.array([3.0, -2.0]))
    np.testing.assert_allclose(g, [6.0, -4.0])


def test_branch_and_join():
    x = mdl.tensor(np.array([2.0]), requires_grad=True)
    y = x * 3.0
    z = y.exp() + y * y  # y feeds two branches that join again
    z.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * (np.exp(6.0) + 2 * 6.0))


def test_the_graph_holds_no_intermediate_array_that_no_backward_saved():
    """The graph keeps Nodes, not Tensors: h's array (read by no backward: relu saves its
    output) is freed once the user drops h, while the graph through it still works."""
    import gc
    import weakref

    x = mdl.tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    h = x * 2.0 + 1.0  # Add saves shapes only
    y = mdl.functional.relu(h)
    freed = weakref.ref(h.data)
    del h
    gc.collect()
    assert freed() is None
    y.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 0.0, 2.0])


def test_backward_releases_what_forward_saved_and_a_second_backward_says_so():
    """As PyTorch: each Node's saved arrays go once its backward has run; a second backward
    through the graph fails naming retain_graph, which keeps them."""
    import gc
    import weakref

    x = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    z = x * 3.0
    w = (z * z).sum()  # Mul saves z's array
    saved = weakref.ref(z.data)
    del z
    gc.collect()
    assert saved() is not None
    w.backward()
    gc.collect()
    assert saved() is None  # released with the Mul node's context
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        w.backward()
    v = (x * x).sum()
    v.backward(retain_graph=True)
    v.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [18.0 + 4.0, 36.0 + 8.0])


def test_gradients_accumulate_across_backward_calls():
    x = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 2.0).sum().backward()
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0])
    x.zero_grad()
    assert x.grad is None


def test_no_grad_and_detach_cut_the_graph():
    x = mdl.tensor(np.ones(3), requires_grad=True)
    with mdl.no_grad():
        y = x * 2.0
    assert not y.requires_grad
    assert not x.detach().requires_grad
    assert (x * 2.0).requires_grad
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.sum().backward()


def test_backward_needs_a_scalar_or_a_gradient():
    x = mdl.tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match="needs a scalar"):
        (x * 2.0).backward()
    (x * 2.0).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(x.grad.numpy(), [2.0, 4.0, 6.0])
    with pytest.raises(ValueError, match="expected the tensor's"):
        (x * 2.0).backward(np.ones(4))


OPS = [
    pytest.param(lambda a, b: a + b, id="add"),
    pytest.param(lambda a, b: a - b, id="sub"),
    pytest.param(lambda a, b: a * b, id="mul"),
    pytest.param(lambda a, b: a / (b * b + 1.0), id="div"),
    pytest.param(lambda a, b: (a * a + 1.0) ** b, id="pow-tensor"),
    pytest.param(lambda a, b: 2.0 - a * 3.0 + 1.0 / (b * b + 1.0) - (-a), id="scalars-both-sides"),
    pytest.param(lambda a, b: (a * b).exp().log() ** 2, id="exp-log-pow"),
    pytest.param(lambda a, b: a.sum(axis=1, keepdims=True) * b.mean(axis=0), id="sum-mean"),
    pytest.param(lambda a, b: a.max() * b + b.max(), id="max"),
    pytest.param(
        lambda a, b: a.reshape(4, 3).transpose(0, 1) @ b.reshape(4, 3), id="reshape-T-matmul"
    ),
    pytest.param(lambda a, b: a.permute(1, 0)[1:3] * b.T[::2], id="permute-getitem"),
    pytest.param(lambda a, b: a[[0, 0, 2]] * b[1], id="fancy-index-repeated"),
    pytest.param(lambda a, b: a @ b.T, id="matmul"),
    pytest.param(lambda a, b: a[0] @ b.T, id="vector-matmul"),
]


@pytest.mark.parametrize("fn", OPS)
def test_math_gradcheck(fn):
    a = mdl.tensor(random((3, 4)), requires_grad=True)
    b = mdl.tensor(random((3, 4), 1), requires_grad=True)
    assert mdl.gradcheck(fn, [a, b])


@pytest.mark.parametrize("fn", OPS)
def test_math_matches_torch(fn):
    torch = pytest.importorskip("torch")
    a, b = random((3, 4)), random((3, 4), 1)
    ta, tb = (torch.tensor(v, requires_grad=True) for v in (a, b))
    ma, mb = (mdl.tensor(v, requires_grad=True) for v in (a, b))
    expected, ours = fn(ta, tb), fn(ma, mb)
    np.testing.assert_allclose(ours.numpy(), expected.detach().numpy(), rtol=1e-10)
    expected.sum().backward()
    ours.sum().backward()
    np.testing.assert_allclose(ma.grad.numpy(), ta.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(mb.grad.numpy(), tb.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_mean_and_pytorch_reduction_names():
    x = mdl.tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert x.mean().item() == 2.5
    x.mean().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full((2, 3), 1 / 6))
    assert x.sum(dim=1, keepdim=True).shape == (2, 1)
    np.testing.assert_allclose(x.mean(dim=0).numpy(), [1.5, 2.5, 3.5])
    assert x.max(dim=1).numpy().tolist() == [2.0, 5.0]
    assert x.argmax(dim=1).numpy().tolist() == [2, 2]
    assert mdl.tensor(np.zeros((2, 3, 4, 5))).flatten(1, 2).shape == (2, 12, 5)


def test_max_along_an_axis():
    a = mdl.tensor(random((3, 4)), requires_grad=True)
    assert mdl.gradcheck(lambda a: a.max(axis=1) * 2.0, [a])
    assert mdl.gradcheck(lambda a: a.max(axis=0, keepdims=True) * 2.0, [a])


def test_dtypes_default_float32_and_keep_float64():
    assert mdl.tensor([1.0, 2.0]).dtype == np.float32
    assert mdl.tensor(np.zeros(2)).dtype == np.float64
    assert mdl.tensor(np.zeros(2), dtype=np.float32).dtype == np.float32
    x = mdl.tensor([1.0], requires_grad=True)
    assert (x * 2 + 1).dtype == np.float32  # Python scalars do not promote
    assert mdl.tensor([1, 2]).dtype.kind == "i"
    assert x.double().dtype == np.float64


def test_conversions_and_item():
    x = mdl.tensor([[1.0, 2.0]])
    assert x.shape == (1, 2) and x.numel() == 2
    assert mdl.tensor([3.5]).item() == 3.5
    with pytest.raises(ValueError, match="one element"):
        x.item()
    assert isinstance(x.numpy(), np.ndarray)


def test_errors_for_bad_shapes_and_devices():
    with pytest.raises(ValueError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        mdl.tensor(np.zeros((2, 3))) @ mdl.tensor(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="cannot be broadcast"):
        mdl.tensor(np.zeros((2, 3))) + mdl.tensor(np.zeros((4,)))
    with pytest.raises(ValueError, match="device must be one of"):
        mdl.tensor([1.0], device="tpu")
    with pytest.raises(TypeError, match="share one dtype"):
        mdl.tensor(np.zeros(2, np.float32)) + mdl.tensor(np.zeros(2, np.float64))


def test_to_device_is_differentiable(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    x = mdl.tensor(np.arange(3.0), requires_grad=True)
    y = x.to("cuda")
    assert y.device == "cuda"
    (y * y).to("cpu").sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 2.0, 4.0])


def test_grad_must_match_the_tensor(monkeypatch):
    x = mdl.tensor(np.zeros((2, 3)), requires_grad=True)
    x.grad = mdl.tensor(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"grad has shape \(3, 2\), expected \(2, 3\)"):
        x.grad = mdl.tensor(np.ones((3, 2)))
    with pytest.raises(TypeError, match="grad is float32, expected the tensor's float64"):
        x.grad = mdl.tensor(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="grad must be a Tensor or None, got ndarray"):
        x.grad = np.ones((2, 3))
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    with pytest.raises(ValueError, match="grad is on 'cuda', expected the tensor's device 'cpu'"):
        x.grad = mdl.tensor(np.ones((2, 3)), device="cuda")
    x.grad = None
    assert x.grad is None


def test_profile_counts_each_op_forward_and_backward():
    from minidl.autograd import profile

    x = mdl.tensor(random((2, 3)), requires_grad=True)
    with profile() as table:
        (x.exp() * 2.0).sum().backward()
    assert table["Exp"][2] == 1 and table["Mul"][2] == 1
    assert table["Exp"][0] > 0 and table["Exp"][1] > 0
    x.exp()
    assert table["Exp"][2] == 1  # nothing is recorded after the block


def test_repr_reads_as_pytorchs():
    """A tensor printed as PyTorch prints it, not as ``tensor(array(...))``."""
    torch = pytest.importorskip("torch")
    for value in ([[1.0, 2.0], [3.0, 4.0]], [0, 1, 2], 2.0, True):  # (its floats: 4 decimals)
        assert repr(mdl.tensor(value)) == repr(torch.tensor(value))
    assert repr(mdl.tensor(0.3) < 0.5) == "tensor(True)"
    assert repr(mdl.tensor([1.5], dtype="float64")) == "tensor([1.5], dtype=float64)"
    assert repr(mdl.tensor([1.0], requires_grad=True)) == "tensor([1.], requires_grad=True)"


def test_op_names_in_messages_are_what_the_user_called():
    from minidl.autograd import op_name
    from minidl.ops.activation import BiasReLUFunction, ReLUFunction
    from minidl.ops.lrn import LocalResponseNormFunction
    from minidl.ops.pool import MaxPool2dFunction

    assert op_name(ReLUFunction) == "relu"  # an acronym stays one word (it was "re_lu")
    assert op_name(BiasReLUFunction) == "bias_relu"
    assert op_name(LocalResponseNormFunction) == "local_response_norm"
    assert op_name(MaxPool2dFunction) == "max_pool2d"
