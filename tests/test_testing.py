"""minidl.testing: each helper passes a right op and catches a wrong one (docs/testing.md)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn, testing
from minidl.autograd import Function
from tests.helpers import check_op as check_op_or_skip
from tests.test_docs import run_page

ROOT = Path(__file__).resolve().parents[1]


class Cube(Function):
    """x^3, with a backward that can be planted wrong: off by ``factor``, on one device only."""

    factor = {"cpu": 1.0, "cuda": 1.0}

    @staticmethod
    def forward(ctx, x):
        ctx.save(x)
        return x * x * x

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved
        return dy * 3 * x * x * Cube.factor[ctx.device]


@pytest.fixture
def cube(monkeypatch):
    """Cube.apply, with its factors reset after the test."""
    monkeypatch.setattr(Cube, "factor", {"cpu": 1.0, "cuda": 1.0})
    return Cube.apply


# ---- check_op: against PyTorch -------------------------------------------------------------------
def test_check_op_passes_a_right_op_and_returns_ours():
    pytest.importorskip("torch")
    y, grads = testing.check_op([(2, 3, 5, 5), (4, 3, 3, 3)], "nn.functional.conv2d", F.conv2d)
    assert y.shape == (2, 4, 3, 3) and [g.shape for g in grads] == [(2, 3, 5, 5), (4, 3, 3, 3)]
    targets = np.array([0, 2, 1])  # an integer array: a constant for both, no gradient
    _, grads = testing.check_op([(3, 4), targets], "nn.functional.cross_entropy", F.cross_entropy)
    assert grads[1] is None


def test_check_op_catches_a_gradient_off_by_a_factor(cube):
    pytest.importorskip("torch")
    Cube.factor["cpu"] = 1.01
    with pytest.raises(testing.GradcheckError):  # the gradcheck, first
        testing.check_op([(3, 4)], lambda x: x**3, cube)
    with pytest.raises(AssertionError, match="gradient of input 0"):  # and PyTorch's gradient
        testing.check_op([(3, 4)], lambda x: x**3, cube, gradcheck=False)


def test_check_op_catches_a_wrong_forward_that_gradcheck_cannot_see():
    """A consistent op (its backward is right for its forward) that is not torch's."""
    pytest.importorskip("torch")
    with pytest.raises(AssertionError, match="forward"):
        testing.check_op([(3, 4)], "nn.functional.softplus", lambda x: F.relu(x) + 0.01)
    with pytest.raises(AssertionError, match="output shape"):
        testing.check_op([(3, 4)], lambda x: x.sum(0), lambda x: x.sum(1))


def test_without_torch_check_op_gradchecks_then_says_torch_is_missing(cube, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    with pytest.raises(testing.TorchMissing, match="pip install torch"):
        testing.check_op([(3, 4)], "nn.functional.relu", F.relu)
    Cube.factor["cpu"] = 1.01
    with pytest.raises(testing.GradcheckError):  # without torch, the gradcheck still runs
        testing.check_op([(3, 4)], lambda x: x**3, cube)
    with pytest.raises(pytest.skip.Exception, match="not installed"):  # tests/helpers.py's wrapper
        check_op_or_skip([(3, 4)], "nn.functional.relu", F.relu)
    with pytest.raises(testing.TorchMissing):
        testing.torch_twin(nn.ReLU())


# ---- check_kernel: the GPU branch against the NumPy path -----------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_check_kernel_passes_our_kernels(dtype, kernel_device):
    y, grads = testing.check_kernel(
        lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1, groups=2),
        [(2, 4, 9, 8), (6, 2, 3, 3), (6,)],
        dtype,
        device=kernel_device,
    )
    assert y.shape == (2, 6, 5, 4) and len(grads) == 3
    targets = np.array([3, 0, 4])
    _, grads = testing.check_kernel(F.cross_entropy, [(3, 5), targets], dtype)
    assert grads[1] is None


@pytest.mark.parametrize("branch", ["forward", "backward"])
def test_check_kernel_catches_a_planted_wrong_gpu_branch(branch, cube, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    testing.check_kernel(cube, [(4, 5)], np.float32)  # the right op passes
    if branch == "backward":
        Cube.factor["cuda"] = 1.001
        wrong = cube
    else:

        def wrong(x):  # a forward that is off on the GPU branch only
            return cube(x) * (1.001 if x.device == "cuda" else 1.0)

    with pytest.raises(AssertionError, match=branch if branch == "forward" else "gradient"):
        testing.check_kernel(wrong, [(4, 5)], np.float32)


def test_check_kernel_tolerance_follows_the_dtype(cube, monkeypatch):
    """A GPU gradient off by 1e-6 (relative) is float32 rounding, and a bug in float64."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    Cube.factor["cuda"] = 1 + 1e-6
    testing.check_kernel(cube, [(4, 5)], np.float32)
    with pytest.raises(AssertionError, match="gradient of input 0"):
        testing.check_kernel(cube, [(4, 5)], np.float64)
    assert testing.TOLERANCE["float64"] < testing.TOLERANCE["float32"]
    with pytest.raises(ValueError, match="no tolerance for int64"):
        testing.assert_close(np.zeros(2), np.zeros(2), np.int64)


# ---- gradcheck -----------------------------------------------------------------------------------
def test_gradcheck_is_minidls_and_catches_a_wrong_backward(cube):
    assert testing.gradcheck is mdl.gradcheck
    x = mdl.tensor(testing.random_array((3, 2)), requires_grad=True)
    assert testing.gradcheck(cube, [x])
    Cube.factor["cpu"] = 1.01
    with pytest.raises(testing.GradcheckError, match="input 0"):
        testing.gradcheck(cube, [x])


def test_distinct_array_has_no_ties():
    values = testing.distinct_array((3, 50, 7), seed=4)
    assert values.shape == (3, 50, 7) and np.unique(values).size == values.size


# ---- torch_twin ----------------------------------------------------------------------------------
def every_layer():
    """Each layer torch_twin knows, in two containers; LRN's alpha near 1, so its convention
    matters (docs/lrn.md)."""
    return nn.Sequential(
        features=nn.Sequential(
            nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.0),
            nn.Conv2d(6, 6, 3, padding=2, dilation=2, bias=False),
            nn.MaxPool2d(3, 2, padding=1, ceil_mode=True),
        ),
        head=nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5),
            nn.Linear(6 * 4 * 3, 8),
            nn.BatchNorm1d(8),
            nn.Tanh(),
            nn.Identity(),
            nn.Linear(8, 3),
            nn.Sigmoid(),
            nn.LogSoftmax(dim=1),
        ),
    )


def twin_and_ours(model, x):
    torch = pytest.importorskip("torch")
    twin = testing.torch_twin(model)
    with torch.no_grad():
        theirs = twin(torch.tensor(x)).numpy()
    return theirs, model(mdl.tensor(x)).numpy()


def test_torch_twin_computes_what_the_model_computes():
    torch = pytest.importorskip("torch")
    mdl.manual_seed(0)
    model = every_layer().double()
    x = testing.random_array((2, 4, 11, 10))
    model(mdl.tensor(x))  # training mode: BatchNorm's running statistics move away from 0 and 1
    model.eval()
    twin = testing.torch_twin(model)
    assert not twin.training and twin.features[0].weight.dtype == torch.float64
    assert twin.features[3].alpha == pytest.approx(1.5)  # ours * size
    assert list(twin.state_dict()) == list(model.state_dict())
    theirs, ours = twin_and_ours(model, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_torch_twin_catches_a_wrong_layer(monkeypatch):
    """LRN with PyTorch's alpha / size planted in our layer: the twin tells them apart."""
    pytest.importorskip("torch")
    mdl.manual_seed(0)
    model = every_layer().double().eval()
    x = testing.random_array((2, 4, 11, 10))
    right = nn.LocalResponseNorm.forward
    monkeypatch.setattr(
        nn.LocalResponseNorm,
        "forward",
        lambda self, a: F.local_response_norm(a, self.size, self.alpha / self.size, self.beta, 1.0),
    )
    theirs, ours = twin_and_ours(model, x)
    assert not np.allclose(ours, theirs, rtol=1e-6)  # the right layer agrees to 1e-10 (below)
    monkeypatch.setattr(nn.LocalResponseNorm, "forward", right)
    theirs, ours = twin_and_ours(model, x)
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)


def test_torch_twin_refuses_what_it_cannot_build():
    pytest.importorskip("torch")

    class Softplus(nn.Module):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="no PyTorch twin for Softplus"):
        testing.torch_twin(nn.Sequential(nn.ReLU(), Softplus()))
    mixed = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2).double())
    with pytest.raises(TypeError, match="mixes dtypes"):
        testing.torch_twin(mixed)


# ---- the module and its page ---------------------------------------------------------------------
def test_minidl_testing_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import minidl as mdl\n"
        "from minidl import testing\n"
        "assert mdl.testing is testing and sys.modules['torch'] is None\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_page_code_runs(tmp_path):
    """docs/testing.md's blocks, as tests/test_docs.py runs the walkthrough pages."""
    env = {k: v for k, v in os.environ.items() if k != "MINIDL_CUDA_EMULATE"}
    env["PYTHONPATH"] = str(ROOT)
    result = run_page("testing.md", sys.executable, tmp_path / "reader", env)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
