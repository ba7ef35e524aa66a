import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests.helpers import assert_all_close, forward_backward, random, torch_forward_backward

SHAPES = [(5,), (3, 4), (2, 3, 5, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_matches_definition_and_torch(shape):
    torch = pytest.importorskip("torch")
    x = random(shape)
    assert np.array_equal(F.relu(mdl.tensor(x)).numpy(), np.maximum(x, 0))
    assert_all_close(forward_backward(F.relu, [x]), torch_forward_backward(torch, torch.relu, [x]))


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_gradcheck(shape):
    x = random(shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    assert mdl.gradcheck(F.relu, [mdl.tensor(x, requires_grad=True)])


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_kernel_matches_numpy(shape, kernel_device, dtype):
    expected = forward_backward(F.relu, [random(shape)], "cpu", dtype)
    assert_all_close(
        forward_backward(F.relu, [random(shape)], kernel_device, dtype), expected, dtype
    )


BIAS_SHAPES = [(2, 3, 5, 7), (4, 6), (1, 5, 3)]


@pytest.mark.parametrize("shape", BIAS_SHAPES)
def test_bias_relu_equals_relu_of_x_plus_bias(shape):
    torch = pytest.importorskip("torch")
    x, b = random(shape), random((shape[1],), 1)
    expand = (1, -1) + (1,) * (len(shape) - 2)
    assert_all_close(
        forward_backward(F.bias_relu, [x, b]),
        torch_forward_backward(torch, lambda x, b: torch.relu(x + b.reshape(expand)), [x, b]),
    )
    x[np.abs(x) < 1e-2] = 0.5
    inputs = [mdl.tensor(a, requires_grad=True) for a in (x, b)]
    assert mdl.gradcheck(F.bias_relu, inputs)


@pytest.mark.parametrize("shape", BIAS_SHAPES)
def test_bias_relu_kernel_matches_numpy(shape, kernel_device, dtype):
    arrays = [random(shape), random((shape[1],), 1)]
    expected = forward_backward(F.bias_relu, arrays, "cpu", dtype)
    assert_all_close(forward_backward(F.bias_relu, arrays, kernel_device, dtype), expected, dtype)


def test_bias_relu_checks_the_bias_shape():
    with pytest.raises(ValueError, match="one bias per channel"):
        F.bias_relu(mdl.tensor(np.zeros((2, 3, 4))), mdl.tensor(np.zeros(4)))
