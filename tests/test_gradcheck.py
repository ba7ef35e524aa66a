import numpy as np
import pytest

import minidl as mdl
from minidl.autograd import Function
from minidl.gradcheck import GradcheckError


class WrongSquare(Function):
    """x^2 with a deliberately wrong backward (3x instead of 2x)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return x * x

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy * 3 * x


def test_passes_on_a_correct_function():
    x = mdl.tensor(np.random.default_rng(0).standard_normal((3, 2)), requires_grad=True)
    assert mdl.gradcheck(lambda x: (x * x).exp(), [x])


def test_catches_a_wrong_backward_and_reports_where():
    x = mdl.tensor(np.array([[1.0, -2.0], [0.5, 3.0]]), requires_grad=True)
    with pytest.raises(GradcheckError) as info:
        mdl.gradcheck(WrongSquare.apply, [x])
    message = str(info.value)
    assert "input 0" in message and "worst at index" in message
    assert "analytic" in message and "numerical" in message


def test_reports_only_the_wrong_input():
    a = mdl.tensor(np.array([1.0, 2.0]), requires_grad=True)
    b = mdl.tensor(np.array([0.5, -1.0]), requires_grad=True)
    with pytest.raises(GradcheckError) as info:
        mdl.gradcheck(lambda a, b: a * 2.0 + WrongSquare.apply(b), [a, b])
    assert "input 1" in str(info.value) and "input 0" not in str(info.value)


def test_needs_float64_and_a_grad_input():
    with pytest.raises(TypeError, match="float64"):
        mdl.gradcheck(lambda x: x * 2, [mdl.tensor([1.0], requires_grad=True)])
    with pytest.raises(ValueError, match="requires_grad"):
        mdl.gradcheck(lambda x: x * 2, [mdl.tensor(np.ones(2))])


def test_leaves_existing_gradients_alone():
    x = mdl.tensor(np.ones(2), requires_grad=True)
    (x * 5.0).sum().backward()
    mdl.gradcheck(lambda x: x * x, [x])
    np.testing.assert_allclose(x.grad.numpy(), [5.0, 5.0])
