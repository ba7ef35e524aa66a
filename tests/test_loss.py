import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    forward_backward,
    random,
    torch_forward_backward,
)

CASES = [pytest.param((n, k), id=f"N{n}-K{k}") for n, k in [(1, 2), (4, 10), (7, 1000), (3, 257)]]


def targets(n, k, seed=0):
    return np.random.default_rng(seed).integers(0, k, n)


@pytest.mark.parametrize("case", CASES)
def test_cross_entropy_matches_reference_and_torch(case):
    torch = pytest.importorskip("torch")
    n, k = case
    z, t = random((n, k)), targets(n, k)
    loss = F.cross_entropy(mdl.tensor(z), t).item()
    assert abs(loss - reference.cross_entropy(z, t)) < 1e-10
    fn = lambda z: F.cross_entropy(z, t)  # noqa: E731
    tfn = lambda z: torch.nn.functional.cross_entropy(z, torch.tensor(t))  # noqa: E731
    assert_all_close(forward_backward(fn, [z]), torch_forward_backward(torch, tfn, [z]))


@pytest.mark.parametrize("case", CASES[:3])
def test_cross_entropy_gradcheck(case):
    n, k = case
    t = targets(n, k)
    z = mdl.tensor(random((n, k)), requires_grad=True)
    assert mdl.gradcheck(lambda z: F.cross_entropy(z, t), [z])


def test_cross_entropy_is_stable_for_huge_logits():
    z = mdl.tensor(np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]], np.float32), requires_grad=True)
    loss = F.cross_entropy(z, np.array([0, 1]))
    loss.backward()
    assert np.isfinite(loss.item()) and abs(loss.item() - np.log(2) / 2) < 1e-6
    assert np.all(np.isfinite(z.grad.numpy()))


@pytest.mark.parametrize("case", CASES)
def test_cross_entropy_kernel_matches_numpy(case, kernel_device, dtype):
    n, k = case
    t = targets(n, k)
    fn = lambda z: F.cross_entropy(z, t)  # noqa: E731
    expected = forward_backward(fn, [random((n, k))], "cpu", dtype)
    assert_all_close(forward_backward(fn, [random((n, k))], kernel_device, dtype), expected, dtype)


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_softmax_and_log_softmax(dim):
    torch = pytest.importorskip("torch")
    z = random((4, 6))
    for ours, theirs in [(F.softmax, torch.softmax), (F.log_softmax, torch.log_softmax)]:
        result = forward_backward(lambda z, f=ours: f(z, dim), [z])
        expected = torch_forward_backward(torch, lambda z, f=theirs: f(z, dim), [z])
        assert_all_close(result, expected)
        assert mdl.gradcheck(lambda z, f=ours: f(z, dim), [mdl.tensor(z, requires_grad=True)])
    assert_close(F.softmax(mdl.tensor(z), dim).numpy().sum(axis=dim), np.ones(4 if dim else 6))


@pytest.mark.parametrize(
    "target, message",
    [
        (np.array([0.0, 1.0]), "integer class indices"),
        (np.array([0, 5]), r"must lie in \[0, 3\)"),
        (np.array([0, 1, 2]), r"expected \(2,\)"),
    ],
)
def test_cross_entropy_errors(target, message):
    with pytest.raises((TypeError, ValueError), match=message):
        F.cross_entropy(mdl.tensor(np.zeros((2, 3))), target)
