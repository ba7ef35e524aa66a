"""BatchNorm: F.batch_norm against a naive loop and PyTorch (values, gradients, running statistics
over several steps, eval), float64 gradient checks, the kernels under the emulator, determinism
and stability, and the layers' buffers (state_dict, checkpoints, to(), optimizers)."""

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import nn, optim, train
from tests import reference
from tests.helpers import assert_close, random

# (shape, training, momentum, eps); odd sizes everywhere, several values of each setting.
CASES = [
    pytest.param(((3, 5, 4, 7), True, 0.1, 1e-5), id="2d-train"),
    pytest.param(((2, 3, 5, 5), False, 0.1, 1e-5), id="2d-eval"),
    pytest.param(((7, 6), True, 0.3, 1e-3), id="1d-NC-train-keras-eps"),
    pytest.param(((5, 4, 9), True, 0.01, 1e-5), id="1d-NCL-train-keras-momentum"),
    pytest.param(((1, 3, 3, 2), True, 0.1, 1e-5), id="batch1-2d-train"),
    pytest.param(((1, 4), False, 0.1, 1e-5), id="batch1-1d-eval"),
    pytest.param(((2, 3, 33, 9), True, 0.5, 0.1), id="more-values-than-threads"),
]


def channel_args(channels, seed=3):
    """weight, bias, running_mean, running_var: distinct, far from the defaults (1, 0, 0, 1), so
    a swapped or ignored one shows."""
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0.5, 2.0, channels) * rng.choice([-1, 1], channels),
        rng.standard_normal(channels),
        rng.standard_normal(channels),
        rng.uniform(0.5, 3.0, channels),
    )


def inputs(shape, seed=0):
    """x with per-channel means and spreads of its own (a shared one would hide a channel mix)."""
    c = shape[1]
    scale = np.linspace(0.5, 3.0, c).reshape(1, c, *([1] * (len(shape) - 2)))
    centre = np.linspace(-2.0, 4.0, c).reshape(scale.shape)
    return random(shape, seed) * scale + centre


def run_ours(case, device="cpu", dtype=np.float64, steps=1):
    """Forward and backward ``steps`` times on fresh inputs; returns the last step's
    (y, dx, dweight, dbias) and the running statistics, all float64."""
    shape, training, momentum, eps = case
    w, b, rm, rv = channel_args(shape[1])
    weight = mdl.tensor(w, dtype=dtype, requires_grad=True, device=device)
    bias = mdl.tensor(b, dtype=dtype, requires_grad=True, device=device)
    running_mean = mdl.tensor(rm, dtype=dtype, device=device)
    running_var = mdl.tensor(rv, dtype=dtype, device=device)
    for step in range(steps):
        x = mdl.tensor(inputs(shape, step), dtype=dtype, requires_grad=True, device=device)
        weight.grad = bias.grad = None
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
        dy = random(shape, 100 + step).astype(dtype)
        y.backward(mdl.tensor(dy, device=device))
    out = [y, x.grad, weight.grad, bias.grad, running_mean, running_var]
    return [t.numpy().astype(np.float64) for t in out]


def run_torch(torch, case, steps=1):
    shape, training, momentum, eps = case
    w, b, rm, rv = (torch.tensor(a) for a in channel_args(shape[1]))
    weight, bias = w.requires_grad_(), b.requires_grad_()
    for step in range(steps):
        x = torch.tensor(inputs(shape, step), requires_grad=True)
        weight.grad = bias.grad = None
        y = torch.nn.functional.batch_norm(x, rm, rv, weight, bias, training, momentum, eps)
        y.backward(torch.tensor(random(shape, 100 + step)))
    return [t.detach().numpy() for t in (y, x.grad, weight.grad, bias.grad, rm, rv)]


NAMES = ("y", "dx", "dweight", "dbias", "running_mean", "running_var")


def assert_results_close(got, expected, dtype=np.float64):
    for name, a, b in zip(NAMES, got, expected):
        assert_close(a, b, dtype, name)


# ---- the NumPy path against the definitions ------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_forward_and_running_stats_match_naive_reference(case):
    shape, training, momentum, eps = case
    x = inputs(shape)
    w, b, rm, rv = channel_args(shape[1])
    running_mean, running_var = mdl.tensor(rm.copy()), mdl.tensor(rv.copy())  # updated in place
    y = F.batch_norm(
        mdl.tensor(x), running_mean, running_var, mdl.tensor(w), mdl.tensor(b),
        training, momentum, eps,
    )  # fmt: skip
    y_ref, rm_ref, rv_ref = reference.batch_norm(x, rm, rv, w, b, training, momentum, eps)
    assert_close(y.numpy(), y_ref, what="y")
    assert_close(running_mean.numpy(), rm_ref, what="running_mean")
    assert_close(running_var.numpy(), rv_ref, what="running_var")


def test_known_answer_biased_to_normalize_unbiased_to_run():
    # one channel, values 1, 2, 3, 6: mean 3, biased variance 3.5, unbiased 14/3
    x = mdl.tensor(np.array([[1.0], [2.0], [3.0], [6.0]]))
    running_mean, running_var = mdl.tensor(np.zeros(1)), mdl.tensor(np.ones(1))
    y = F.batch_norm(x, running_mean, running_var, training=True, momentum=0.5, eps=0.0)
    np.testing.assert_allclose(y.numpy().ravel(), (np.array([1, 2, 3, 6]) - 3) / np.sqrt(3.5))
    np.testing.assert_allclose(running_mean.numpy(), [1.5])
    np.testing.assert_allclose(running_var.numpy(), [0.5 + 0.5 * 14 / 3])


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [(3, 4, 3, 2), (4, 3), (3, 2, 5)], ids=["2d", "1d-NC", "1d-NCL"])
def test_gradcheck_x_weight_bias(shape, training):
    rm, rv = channel_args(shape[1])[2:]
    tensors = [
        mdl.tensor(inputs(shape), requires_grad=True),
        mdl.tensor(channel_args(shape[1])[0], requires_grad=True),
        mdl.tensor(channel_args(shape[1])[1], requires_grad=True),
    ]

    def fn(x, w, b):  # fresh running statistics per call: they are not inputs here
        return F.batch_norm(x, mdl.tensor(rm), mdl.tensor(rv), w, b, training, 0.1, 1e-5)

    assert mdl.gradcheck(fn, tensors)


# ---- PyTorch parity: values, gradients and running statistics over several steps, then eval ----
@pytest.mark.parametrize("case", CASES)
def test_matches_torch_over_steps(case):
    torch = pytest.importorskip("torch")
    assert_results_close(run_ours(case, steps=3), run_torch(torch, case, steps=3))


def test_matches_torch_after_training_then_eval():
    torch = pytest.importorskip("torch")
    ours, theirs = nn.BatchNorm2d(5).double(), torch.nn.BatchNorm2d(5).double()
    for step in range(4):
        x = inputs((4, 5, 3, 3), step)
        ours(mdl.tensor(x))
        theirs(torch.tensor(x))
    ours.eval()
    theirs.eval()
    x = inputs((2, 5, 3, 3), 9)
    assert_close(ours(mdl.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy())
    state = ours.state_dict()
    for name, value in theirs.state_dict().items():
        assert_close(np.asarray(state[name], np.float64), value.double().numpy(), what=name)


# ---- batch 1 and argument errors -----------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1), (1, 2, 1, 1)])
def test_one_value_per_channel_in_training_is_a_clear_error(shape):
    x = mdl.tensor(np.ones(shape))
    stats = mdl.tensor(np.zeros(shape[1])), mdl.tensor(np.ones(shape[1]))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
        F.batch_norm(x, *stats, training=True)
    assert F.batch_norm(x, *stats, training=False).shape == shape  # eval is fine


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda x, s: F.batch_norm(x, None, None, training=False), ValueError, "needs running"),
        (lambda x, s: F.batch_norm(x, s[0], None), ValueError, "both running_mean and"),
        (
            lambda x, s: F.batch_norm(x, mdl.tensor(np.zeros(4)), s[1]),
            ValueError,
            r"running_mean must have shape \(3,\)",
        ),
        (lambda x, s: F.batch_norm(x[0, 0], *s), ValueError, "at least 2 dimensions"),
        (lambda x, s: F.batch_norm(x, *s, momentum=1.5), ValueError, "momentum"),
        (
            lambda x, s: F.batch_norm(x, *s, weight=mdl.tensor(np.ones(3, np.float32))),
            TypeError,
            "weight has dtype float32",
        ),
    ],
)
def test_argument_errors_name_the_argument(call, error, message):
    x = mdl.tensor(np.ones((2, 3, 2)))
    stats = mdl.tensor(np.zeros(3)), mdl.tensor(np.ones(3))
    with pytest.raises(error, match=message):
        call(x, stats)


def test_without_running_statistics_training_uses_the_batch():
    x = inputs((4, 3, 2))
    y = F.batch_norm(mdl.tensor(x), None, None, training=True).numpy()
    y_ref, _, _ = reference.batch_norm(x, np.zeros(3), np.ones(3), np.ones(3), np.zeros(3),
                                       True, 0.1, 1e-5)  # fmt: skip
    assert_close(y, y_ref)


# ---- stability and determinism -------------------------------------------------------------------
def large_mean_run(device, dtype):
    """Channels with mean 1e4 and spread 1: E[x^2] - E[x]^2 in float32 returns a variance of
    0, 24 or -8 for them; the two-pass statistics keep float32 within a few ulps of float64."""
    x = (1e4 + random((16, 3, 8, 8)) * np.array([1.0, 0.5, 2.0])[:, None, None]).astype(np.float32)
    running_mean = mdl.tensor(np.zeros(3), dtype=dtype, device=device)
    running_var = mdl.tensor(np.ones(3), dtype=dtype, device=device)
    xt = mdl.tensor(x, dtype=dtype, device=device)  # the same float32 values in both dtypes
    y = F.batch_norm(xt, running_mean, running_var, training=True, momentum=1.0)
    return [t.numpy().astype(np.float64) for t in (y, running_mean, running_var)]


def test_large_mean_is_stable_in_float32():
    y, mean, var = large_mean_run("cpu", np.float32)
    y64, mean64, var64 = large_mean_run("cpu", np.float64)
    np.testing.assert_allclose(y, y64, atol=2e-6)  # y is O(1): about 16 float32 ulps
    np.testing.assert_allclose(mean, mean64, rtol=1e-7)  # within float32's rounding of 1e4
    np.testing.assert_allclose(var, var64, rtol=1e-6)


def test_kernel_large_mean_is_stable_in_float32(kernel_device):
    y, mean, var = large_mean_run(kernel_device, np.float32)
    y64, mean64, var64 = large_mean_run("cpu", np.float64)
    np.testing.assert_allclose(y, y64, atol=2e-6)
    np.testing.assert_allclose(mean, mean64, rtol=1e-7)
    np.testing.assert_allclose(var, var64, rtol=1e-6)


def test_kernel_gives_the_same_bits_twice(kernel_device):
    case = ((6, 3, 17, 13), True, 0.1, 1e-5)  # 1,326 values per channel: every thread adds many
    first = run_ours(case, kernel_device, np.float32, steps=2)
    second = run_ours(case, kernel_device, np.float32, steps=2)
    for name, a, b in zip(NAMES, first, second):
        assert np.array_equal(a, b), f"{name} differs between two identical runs"


# ---- the kernels against the NumPy path ----------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_kernel_matches_numpy(case, kernel_device, dtype):
    expected = run_ours(case, "cpu", dtype, steps=2)
    assert_results_close(run_ours(case, kernel_device, dtype, steps=2), expected, dtype)


@pytest.mark.gpu
def test_gradcheck_on_gpu(kernel_device):
    tensors = [
        mdl.tensor(inputs((3, 2, 2, 3)), requires_grad=True, device=kernel_device),
        mdl.tensor(np.array([1.5, -0.7]), requires_grad=True, device=kernel_device),
        mdl.tensor(np.array([0.2, 0.3]), requires_grad=True, device=kernel_device),
    ]
    assert mdl.gradcheck(lambda x, w, b: F.batch_norm(x, None, None, w, b, True), tensors)


# ---- the layers and their buffers ----------------------------------------------------------------
def test_layers_register_buffers_not_parameters():
    bn = nn.BatchNorm2d(4)
    assert [name for name, _ in bn.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in bn.named_buffers()] == [
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    model = nn.Sequential(nn.Conv2d(1, 4, 3), bn)
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    ]
    assert len(model.parameters()) == 4
    assert not any(b.requires_grad for b in model.buffers())


def test_layers_check_their_input_rank_and_channels():
    with pytest.raises(ValueError, match=r"BatchNorm2d: expected \(N, C, H, W\) input"):
        nn.BatchNorm2d(3)(mdl.tensor(np.ones((2, 3))))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(3\): input has 4 channels"):
        nn.BatchNorm1d(3)(mdl.tensor(np.ones((2, 4), np.float32)))


def test_eval_uses_running_statistics_and_leaves_them_alone():
    bn = nn.BatchNorm1d(3).double()
    x = mdl.tensor(inputs((5, 3)))
    bn(x)
    before = bn.state_dict()
    bn.eval()
    y = bn(x).numpy()
    mean, var = before["running_mean"], before["running_var"]
    assert_close(y, (x.numpy() - mean) / np.sqrt(var + 1e-5))
    for name, value in bn.state_dict().items():
        assert np.array_equal(value, before[name]), name


@pytest.mark.parametrize("make_optimizer", [
    lambda p: optim.SGD(p, lr=0.5, momentum=0.9, weight_decay=0.1),
    lambda p: optim.Adam(p, lr=0.5, weight_decay=0.1),
], ids=["sgd", "adam"])  # fmt: skip
def test_optimizers_never_touch_the_buffers(make_optimizer):
    bn = nn.BatchNorm1d(3)
    opt = make_optimizer(bn.parameters())
    assert not any(p is b for p in opt.params for b in bn.buffers())
    for step in range(3):
        loss = (bn(mdl.tensor(inputs((4, 3), step), dtype=np.float32)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        before = {name: b.numpy().copy() for name, b in bn.named_buffers()}
        opt.step()
        for name, b in bn.named_buffers():
            assert np.array_equal(b.numpy(), before[name]), f"step {step} changed {name}"
    assert not np.array_equal(bn.running_mean.numpy(), np.zeros(3))  # forward did update them
    assert not np.array_equal(bn.weight.numpy(), np.ones(3))  # and the optimizer did run


def test_buffers_are_saved_in_checkpoints_and_restored(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = optim.Adam(model.parameters())
    for step in range(3):
        model(mdl.tensor(inputs((5, 3), step), dtype=np.float32)).sum().backward()
        opt.step()
    train.save_checkpoint(tmp_path / "c.npz", model, opt, epoch=3)
    saved = model.state_dict()
    fresh = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    fresh_opt = optim.Adam(fresh.parameters())
    epoch, _ = train.load_checkpoint(tmp_path / "c.npz", fresh, fresh_opt)
    assert epoch == 3
    assert not np.array_equal(saved["1.running_mean"], np.zeros(4))  # they did move
    for name, value in fresh.state_dict().items():
        assert np.array_equal(value, saved[name]), name
    fresh.eval()
    model.eval()
    x = mdl.tensor(inputs((2, 3), 7), dtype=np.float32)
    assert np.array_equal(fresh(x).numpy(), model(x).numpy())


def test_to_and_double_move_the_buffers_in_place(monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    bn = nn.BatchNorm2d(3)
    running_mean = bn.running_mean
    bn.to("cuda")
    assert bn.running_mean is running_mean and running_mean.device == "cuda"
    assert bn.running_var.device == "cuda"
    bn(mdl.tensor(inputs((2, 3, 2, 2)), dtype=np.float32, device="cuda"))  # kernels update them
    moved = running_mean.numpy().copy()
    bn.cpu().double()
    assert running_mean.device == "cpu" and running_mean.dtype == np.float64
    assert bn.running_var.dtype == np.float64
    np.testing.assert_allclose(running_mean.numpy(), moved)


def test_load_state_dict_checks_buffer_shapes():
    bn = nn.BatchNorm1d(3)
    state = bn.state_dict()
    state["running_var"] = np.ones(4)
    with pytest.raises(ValueError, match="running_var has shape"):
        bn.load_state_dict(state)
    del state["running_var"]
    with pytest.raises(KeyError, match="running_var"):
        bn.load_state_dict(state)


def test_small_alexnet_batch_norm_variant():
    from minidl.models.alexnet import SmallAlexNet

    model = SmallAlexNet(norm="batch")
    assert isinstance(model.features.norm1, nn.BatchNorm2d)
    assert model.features.norm2.num_features == 64
    assert "features.norm1.running_mean" in model.state_dict()
    x = mdl.tensor(random((4, 1, 28, 28)), dtype=np.float32)
    mdl.functional.cross_entropy(model(x), np.array([0, 1, 2, 3])).backward()
    assert model.features.norm1.weight.grad is not None
    assert not np.array_equal(model.features.norm1.running_mean.numpy(), np.zeros(32))
    assert isinstance(SmallAlexNet().features.norm1, nn.LocalResponseNorm)  # the default
    with pytest.raises(ValueError, match="norm must be 'lrn' or 'batch'"):
        SmallAlexNet(norm="group")


def test_summary_leaves_running_statistics_and_mode_alone(capsys):
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
    model.summary((1, 5, 5))
    assert model.training and model[1].training
    assert np.array_equal(model[1].running_var.numpy(), np.ones(3))


# ---- momentum=None: a cumulative moving average (PyTorch's num_batches_tracked) ------------------
MOMENTUM_NONE_CASES = [("BatchNorm1d", (6, 3)), ("BatchNorm2d", (4, 3, 2, 2))]


@pytest.mark.parametrize("layer, shape", MOMENTUM_NONE_CASES)
def test_momentum_none_averages_every_batch_equally(layer, shape):
    # running = running + (batch - running) / n after n batches: the plain mean of the batches'
    # statistics (unbiased variance), whatever the start; state_dict keys are PyTorch's
    bn = getattr(nn, layer)(3, momentum=None).double()
    axes = (0,) + tuple(range(2, len(shape)))
    batches = [inputs(shape, step) for step in range(4)]
    for x in batches:
        bn(mdl.tensor(x))
    state = bn.state_dict()
    keys = ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    assert list(state) == keys
    assert state["num_batches_tracked"].dtype == np.int64 and int(state["num_batches_tracked"]) == 4
    assert_close(state["running_mean"], np.mean([x.mean(axis=axes) for x in batches], axis=0))
    assert_close(state["running_var"], np.mean([x.var(axis=axes, ddof=1) for x in batches], axis=0))
    bn.eval()
    bn(mdl.tensor(batches[0]))
    assert int(bn.state_dict()["num_batches_tracked"]) == 4  # eval counts nothing


@pytest.mark.parametrize("layer, shape", MOMENTUM_NONE_CASES)
def test_momentum_none_matches_torch(layer, shape):
    torch = pytest.importorskip("torch")
    ours = getattr(nn, layer)(3, momentum=None).double()
    theirs = getattr(torch.nn, layer)(3, momentum=None).double()
    for step in range(4):
        x = inputs(shape, step)
        ours(mdl.tensor(x))
        theirs(torch.tensor(x))
    state = ours.state_dict()
    assert list(state) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        assert_close(np.asarray(state[name], np.float64), value.double().numpy(), what=name)
    ours.eval()
    theirs.eval()
    x = inputs(shape, 9)
    assert_close(ours(mdl.tensor(x)).numpy(), theirs(torch.tensor(x)).detach().numpy())


@pytest.mark.parametrize("layer, shape", MOMENTUM_NONE_CASES)
def test_momentum_set_to_none_after_construction_averages_from_then_on(layer, shape):
    """``bn.momentum = None`` on a built layer: the first forward failed (no counter); now the
    counter starts at 0 and the layer matches PyTorch's made with momentum=None, and a bad
    value is refused on assignment too, as in the constructor."""
    torch = pytest.importorskip("torch")
    ours = getattr(nn, layer)(3).double()
    ours.momentum = None
    theirs = getattr(torch.nn, layer)(3, momentum=None).double()
    for step in range(3):
        ours(mdl.tensor(inputs(shape, step)))
        theirs(torch.tensor(inputs(shape, step)))
    for name, value in theirs.state_dict().items():
        assert_close(np.asarray(ours.state_dict()[name], np.float64), value.double().numpy())
    for bad in (1.5, -0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="momentum must be in \\[0, 1\\] or None"):
            ours.momentum = bad
    ours.momentum = np.float32(0.5)  # any real number in [0, 1]
    assert ours.momentum == 0.5


@pytest.mark.parametrize("momentum", [0.1, None])
def test_num_batches_tracked_counts_every_training_batch_as_torch(momentum):
    torch = pytest.importorskip("torch")
    ours = nn.BatchNorm2d(3, momentum=momentum).double()
    theirs = torch.nn.BatchNorm2d(3, momentum=momentum).double()
    for step in range(3):
        ours(mdl.tensor(inputs((2, 3, 2, 2), step)))
        theirs(torch.tensor(inputs((2, 3, 2, 2), step)))
    ours.eval()
    ours(mdl.tensor(inputs((2, 3, 2, 2), 7)))  # eval counts nothing
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert int(ours.state_dict()["num_batches_tracked"]) == 3 == int(theirs.num_batches_tracked)
    ours.reset_running_stats()
    assert int(ours.num_batches_tracked.numpy()) == 0
    assert "num_batches_tracked" not in nn.BatchNorm2d(3, track_running_stats=False).state_dict()


def test_a_state_dict_without_the_counter_loads_and_keeps_the_layers_count():
    """A checkpoint written before every layer kept num_batches_tracked loads, strict, as
    PyTorch's layer loads an old state dict; the counter stays what it was."""
    bn = nn.BatchNorm2d(3)
    bn(mdl.tensor(inputs((2, 3, 2, 2)).astype(np.float32)))
    old = {k: v for k, v in nn.BatchNorm2d(3).state_dict().items() if k != "num_batches_tracked"}
    old["running_mean"] = np.full(3, 0.5, np.float32)
    bn.load_state_dict(old)
    assert_close(bn.running_mean.numpy(), np.full(3, 0.5))
    assert int(bn.num_batches_tracked.numpy()) == 1
    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert model.load_state_dict(state) == ([], [])
