import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl.autograd import Function
from tests import reference
from tests.helpers import assert_all_close, assert_close, check_op, forward_backward, random


@pytest.mark.parametrize("n, i, o", [(1, 3, 2), (5, 7, 4), (2, 16, 9)])
def test_linear(n, i, o):
    x, w, b = random((n, i)), random((o, i), 1), random((o,), 2)
    assert_close(
        F.linear(mdl.tensor(x), mdl.tensor(w), mdl.tensor(b)).numpy(), reference.linear(x, w, b)
    )
    check_op([x, w, b], "nn.functional.linear", F.linear)


@pytest.mark.parametrize(
    "shapes",
    [
        [(2, 3, 5), (4, 5), (4,)],  # extra leading dimensions
        [(3, 5), (4, 5), None],  # no bias
    ],
    ids=["leading-dims", "no-bias"],
)
def test_linear_against_torch(shapes):
    check_op(shapes, "nn.functional.linear", F.linear)


def test_linear_on_kernel_device(kernel_device, dtype):
    arrays = (random((3, 5)), random((4, 5), 1), random((4,), 2))
    expected = forward_backward(F.linear, arrays, "cpu", dtype)
    assert_all_close(forward_backward(F.linear, arrays, kernel_device, dtype), expected, dtype)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"x has 3 features but weight expects 4"):
        F.linear(mdl.tensor(np.zeros((2, 3))), mdl.tensor(np.zeros((5, 4))))
    with pytest.raises(ValueError, match="bias has shape"):
        F.linear(
            mdl.tensor(np.zeros((2, 4))), mdl.tensor(np.zeros((5, 4))), mdl.tensor(np.zeros(4))
        )


class TimesTwoWrongBackward(Function):
    @staticmethod
    def forward(ctx, x):
        return 2 * x

    @staticmethod
    def backward(ctx, dy):
        return 3 * dy  # wrong on purpose: the derivative is 2


def test_check_op_catches_a_wrong_gradient_and_a_wrong_forward():
    with pytest.raises(AssertionError, match="gradcheck failed"):
        check_op([(3, 2)], lambda x: 2 * x, TimesTwoWrongBackward.apply)
    with pytest.raises(AssertionError, match="gradient of input 0"):  # torch sees it too
        check_op([(3, 2)], lambda x: 2 * x, TimesTwoWrongBackward.apply, gradcheck=False)
    with pytest.raises(AssertionError, match="forward"):  # right gradient, shifted values
        check_op([(3, 2)], lambda x: 2 * x, lambda x: 2 * x + 1e-3)
