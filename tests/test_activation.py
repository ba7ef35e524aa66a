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
