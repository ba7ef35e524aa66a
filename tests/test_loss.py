import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from tests import reference
from tests.helpers import (
    assert_all_close,
    assert_close,
    check_op,
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
    "target, kwargs, message",
    [
        (np.array([0.0, 1.0]), {}, r"probability target has shape \(2,\)"),
        (np.array([True, False]), {}, "integer class indices or float probabilities"),
        (np.array([0, 5]), {}, r"must lie in \[0, 3\) or equal ignore_index -100, got 5"),
        (np.array([0, -1]), {}, "got -1"),
        (np.array([0, 1, 2]), {}, r"expected \(2,\)"),
        (np.array([0, 1]), dict(reduction="batchmean"), "reduction must be 'mean', 'sum'"),
        (np.array([0, 1]), dict(label_smoothing=1.5), r"label_smoothing must lie in \[0, 1\]"),
        (np.array([0, 1]), dict(weight=np.ones(2)), r"weight has shape \(2,\), expected \(3,\)"),
        (np.array([0, 1]), dict(weight=np.ones(3, np.float32)), "weight has dtype float32"),
        (np.full((2, 3), 1 / 3), dict(ignore_index=0), "ignore_index is not supported for prob"),
        (np.full((2, 3), 1 / 3, np.float32), {}, "probability target has dtype float32"),
    ],
)
def test_cross_entropy_errors(target, kwargs, message):
    with pytest.raises((TypeError, ValueError), match=message):
        F.cross_entropy(mdl.tensor(np.zeros((2, 3))), target, **kwargs)


# ---- PyTorch's options ---------------------------------------------------------------------------
# Named records: the logits' shape, the kind of target ("class", "class-ignored": some elements
# equal ignore_index, "probs") and the keyword arguments, passed the same to both libraries.
WEIGHT = "weight"  # stands for a (K,) array of class weights, drawn per case
OPTION_CASES = [
    pytest.param(dict(z=(5, 7), target="class", reduction="sum"), id="sum"),
    pytest.param(dict(z=(5, 7), target="class", reduction="none"), id="none"),
    pytest.param(dict(z=(6, 7), target="class-ignored"), id="ignore-index-mean"),
    pytest.param(dict(z=(6, 7), target="class-ignored", ignore_index=2), id="ignore-index-2"),
    pytest.param(dict(z=(6, 7), target="class", weight=WEIGHT), id="weight-mean"),
    pytest.param(dict(z=(6, 7), target="class-ignored", weight=WEIGHT), id="weight-ignored-mean"),
    pytest.param(dict(z=(6, 7), target="class", label_smoothing=0.3), id="smoothing"),
    pytest.param(
        dict(z=(6, 7), target="class-ignored", weight=WEIGHT, label_smoothing=0.2),
        id="smoothing-weight-ignored",
    ),
    pytest.param(
        dict(z=(6, 7), target="class", weight=WEIGHT, label_smoothing=0.1, reduction="none"),
        id="smoothing-weight-none",
    ),
    pytest.param(dict(z=(5, 7), target="probs"), id="probs"),
    pytest.param(
        dict(z=(5, 7), target="probs", weight=WEIGHT, label_smoothing=0.25), id="probs-smoothing-w"
    ),
    pytest.param(dict(z=(5, 7), target="probs", reduction="sum"), id="probs-sum"),
    pytest.param(dict(z=(3, 4, 2, 3), target="class"), id="spatial-plain"),
    pytest.param(
        dict(z=(3, 4, 2, 3), target="class-ignored", weight=WEIGHT, reduction="none"),
        id="spatial-weight-none",
    ),
    pytest.param(
        dict(z=(2, 4, 3), target="probs", weight=WEIGHT, label_smoothing=0.1), id="spatial-probs"
    ),
    pytest.param(dict(z=(6,), target="class"), id="unbatched"),
    pytest.param(dict(z=(6,), target="probs", reduction="none"), id="unbatched-probs"),
]


def make_options(case, seed=0):
    """-> logits, target, the keyword arguments (with the weight drawn)."""
    rng = np.random.default_rng(seed)
    shape = case["z"]
    k = shape[1] if len(shape) > 1 else shape[0]
    element_shape = shape[:1] + shape[2:] if len(shape) > 1 else ()
    if case["target"] == "probs":
        target = rng.dirichlet(np.ones(k), size=element_shape)  # (..., K)
        target = np.moveaxis(target, -1, 1 if len(shape) > 1 else 0)
    else:
        target = rng.integers(0, k, element_shape)
        if case["target"] == "class-ignored":
            ignored = case.get("ignore_index", -100)
            target.flat[::3] = ignored  # every third element
    kwargs = {key: v for key, v in case.items() if key not in ("z", "target")}
    if "weight" in kwargs:
        kwargs["weight"] = rng.uniform(0.2, 2.0, k)
    return random(shape, seed + 1) * 2, target, kwargs


def torch_kwargs(torch, kwargs):
    return {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_naive_reference(case):
    z, t, kwargs = make_options(case)
    loss = F.cross_entropy(mdl.tensor(z), t, **kwargs).numpy()
    full = dict(weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0)
    expected = reference.cross_entropy_options(z, t, **{**full, **kwargs})
    assert loss.shape == np.shape(expected)
    assert_close(loss, expected)


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_match_torch_and_gradcheck(case):
    torch = pytest.importorskip("torch")
    z, t, kwargs = make_options(case)
    check_op(
        [z],
        lambda z: torch.nn.functional.cross_entropy(
            z, torch.tensor(t), **torch_kwargs(torch, kwargs)
        ),
        lambda z: F.cross_entropy(z, t, **kwargs),
    )


@pytest.mark.parametrize("case", OPTION_CASES)
def test_options_kernel_matches_numpy(case, kernel_device, dtype):
    z, t, kwargs = make_options(case)
    t = t.astype(dtype) if t.dtype.kind == "f" else t  # probabilities share the logits' dtype
    kwargs = {k: v.astype(dtype) if k == "weight" else v for k, v in kwargs.items()}
    fn = lambda z: F.cross_entropy(z, t, **kwargs)  # noqa: E731
    expected = forward_backward(fn, [z], "cpu", dtype)
    assert_all_close(forward_backward(fn, [z], kernel_device, dtype), expected, dtype)


def test_every_target_ignored_gives_nan_as_torch():
    torch = pytest.importorskip("torch")
    z, t = random((3, 4)), np.full(3, -100)
    expected = torch.nn.functional.cross_entropy(torch.tensor(z), torch.tensor(t)).item()
    assert np.isnan(expected) and np.isnan(F.cross_entropy(mdl.tensor(z), t).item())


def test_plain_mean_keeps_the_fast_path():
    """AlexNet's loss (class indices, no option set) runs the plain kernels, not the options'."""
    from minidl.ops.loss import CrossEntropyFunction, CrossEntropyOptionsFunction

    z = mdl.tensor(random((4, 10)), requires_grad=True)
    assert F.cross_entropy(z, np.arange(4))._node.fn is CrossEntropyFunction
    with_ignored = F.cross_entropy(z, np.array([0, 1, -100, 3]))
    assert with_ignored._node.fn is CrossEntropyOptionsFunction


def test_options_are_stable_for_huge_logits(kernel_device):
    z = np.array([[1e4, 0.0, -1e4], [0.0, 1e4, 1e4]])
    for device in ("cpu", kernel_device):
        t = mdl.tensor(z, requires_grad=True, device=device)
        loss = F.cross_entropy(
            t, np.array([0, 1]), weight=np.array([1.0, 2.0, 3.0]), reduction="sum"
        )
        loss.backward()
        assert abs(loss.item() - 2 * np.log(2)) < 1e-9
        assert np.all(np.isfinite(t.grad.numpy()))


@pytest.mark.parametrize(
    "logits, message",
    [
        (np.zeros((2, 3), np.int64), "logits must be floating point, got dtype int64"),
        (np.float64(1.0), r"logits must be \(N, classes\)"),
    ],
)
def test_logits_errors(logits, message):
    with pytest.raises((TypeError, ValueError), match=message):
        F.cross_entropy(mdl.tensor(logits), np.array([0, 1]))


def test_a_target_needing_a_gradient_is_refused():
    p = mdl.tensor(np.full((2, 3), 1 / 3), requires_grad=True)
    with pytest.raises(ValueError, match="gradients with respect to the target"):
        F.cross_entropy(mdl.tensor(np.zeros((2, 3))), p)
