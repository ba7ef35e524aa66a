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

# (shape, size, alpha, beta, k); alpha near 1 so every term of the window sum matters.
CASES = [
    pytest.param(((2, 7, 4, 5), 5, 1.0, 0.75, 2.0), id="paper-n5-alpha1"),
    pytest.param(((1, 6, 3, 3), 3, 0.8, 0.75, 1.0), id="n3-batch1"),
    pytest.param(((2, 9, 3, 2), 7, 0.5, 0.6, 2.0), id="n7"),
    pytest.param(((2, 3, 5, 4), 5, 1.2, 0.9, 1.5), id="window-wider-than-channels"),
    pytest.param(((2, 96, 3, 3), 5, 1e-4, 0.75, 2.0), id="paper-values-96ch"),
    pytest.param(((1, 4, 1, 1), 1, 1.0, 0.75, 2.0), id="n1"),
]


def test_known_answer_from_the_paper_formula():
    x = mdl.tensor(np.arange(1.0, 8.0).reshape(1, 7, 1, 1))
    y = F.local_response_norm(x, size=5, alpha=1.0, beta=0.75, k=2.0).numpy().ravel()
    expected = [0.125, 0.14865089, 0.14461559, 0.13465396, 0.12486180, 0.15766808, 0.20332207]
    np.testing.assert_allclose(y, expected, rtol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_naive_reference(case):
    shape, size, alpha, beta, k = case
    a = random(shape)
    y = F.local_response_norm(mdl.tensor(a), size, alpha, beta, k).numpy()
    assert_close(y, reference.local_response_norm(a, size, alpha, beta, k))


@pytest.mark.parametrize("case", CASES)
def test_gradcheck(case):
    shape, size, alpha, beta, k = case
    a = mdl.tensor(random((1, shape[1], 2, 2)), requires_grad=True)
    assert mdl.gradcheck(lambda a: F.local_response_norm(a, size, alpha, beta, k), [a])


@pytest.mark.parametrize("case", CASES)
def test_matches_torch_with_alpha_times_size(case):
    torch = pytest.importorskip("torch")
    shape, size, alpha, beta, k = case
    ours = forward_backward(
        lambda a: F.local_response_norm(a, size, alpha, beta, k), [random(shape)]
    )
    lrn = torch.nn.LocalResponseNorm(
        size, alpha=alpha * size, beta=beta, k=k
    )  # torch divides by size
    assert_all_close(ours, torch_forward_backward(torch, lrn, [random(shape)]))


@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_numpy(case, kernel_device, dtype):
    shape, size, alpha, beta, k = case
    fn = lambda a: F.local_response_norm(a, size, alpha, beta, k)  # noqa: E731
    expected = forward_backward(fn, [random(shape)], "cpu", dtype)
    assert_all_close(forward_backward(fn, [random(shape)], kernel_device, dtype), expected, dtype)


@pytest.mark.gpu
def test_gradcheck_on_gpu(kernel_device):
    a = mdl.tensor(random((1, 7, 2, 3)), requires_grad=True, device=kernel_device)
    assert mdl.gradcheck(lambda a: F.local_response_norm(a, 5, 1.0, 0.75, 2.0), [a])


@pytest.mark.parametrize("size", [0, 2, 4, 2.5])
def test_even_or_bad_size_is_an_error(size):
    with pytest.raises(ValueError, match="size must be a positive odd integer"):
        F.local_response_norm(mdl.tensor(np.zeros((1, 4, 2, 2))), size=size)
