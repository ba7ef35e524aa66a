import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import assert_all_close, check_op, forward_backward, random

SHAPES = [(5,), (3, 4), (2, 3, 5, 7)]


def away_from_the_kink(x, margin=1e-3):
    """ReLU has no derivative at 0: finite differences across it would disagree."""
    x = x.copy()
    x[np.abs(x) < margin] = 0.5
    return x


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_matches_definition_and_torch(shape):
    x = away_from_the_kink(random(shape))
    assert np.array_equal(F.relu(mdl.tensor(x)).numpy(), reference.relu(x))
    check_op([x], lambda x: x.relu(), F.relu)


@pytest.mark.parametrize("shape", SHAPES)
def test_relu_kernel_matches_numpy(shape, kernel_device, dtype):
    expected = forward_backward(F.relu, [random(shape)], "cpu", dtype)
    assert_all_close(
        forward_backward(F.relu, [random(shape)], kernel_device, dtype), expected, dtype
    )


BIAS_SHAPES = [(2, 3, 5, 7), (4, 6), (1, 5, 3)]


@pytest.mark.parametrize("shape", BIAS_SHAPES)
def test_bias_relu_matches_definition_and_torch(shape):
    x, b = away_from_the_kink(random(shape), 1e-2), random((shape[1],), 1)
    assert np.array_equal(
        F.bias_relu(mdl.tensor(x), mdl.tensor(b)).numpy(), reference.bias_relu(x, b)
    )
    expand = (1, -1) + (1,) * (len(shape) - 2)
    check_op([x, b], lambda x, b: (x + b.reshape(expand)).relu(), F.bias_relu)


@pytest.mark.parametrize("shape", BIAS_SHAPES)
def test_bias_relu_kernel_matches_numpy(shape, kernel_device, dtype):
    arrays = [random(shape), random((shape[1],), 1)]
    expected = forward_backward(F.bias_relu, arrays, "cpu", dtype)
    assert_all_close(forward_backward(F.bias_relu, arrays, kernel_device, dtype), expected, dtype)


def test_bias_relu_checks_the_bias_shape():
    with pytest.raises(ValueError, match="one bias per channel"):
        F.bias_relu(mdl.tensor(np.zeros((2, 3, 4))), mdl.tensor(np.zeros(4)))
