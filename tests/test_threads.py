"""The CPU path's thread pool (minidl/threads.py, docs/threads.md): the knob, the parts, and the
same bits for any thread count, op by op and for whole AlexNet training steps."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import minidl as mdl
import minidl.functional as F
from minidl import optim, threads
from minidl.models.alexnet import AlexNet, SmallAlexNet

ROOT = Path(__file__).resolve().parents[1]
COUNTS = (1, 2, 3, 4)  # more threads than cores is allowed, and must not change a bit


@pytest.fixture(autouse=True)
def restore_threads(monkeypatch):
    before = threads.get_num_threads()
    yield
    threads.set_num_threads(before)


@pytest.fixture
def small_parts(monkeypatch):
    """Every test-sized op is cut into several parts (a part is normally at least 128 KiB)."""
    monkeypatch.setattr(threads, "MIN_PART_BYTES", 64)


# ---- the knob ------------------------------------------------------------------------------------
def test_set_and_get():
    mdl.set_num_threads(3)
    assert mdl.get_num_threads() == 3
    mdl.set_num_threads(1)
    assert mdl.get_num_threads() == 1


@pytest.mark.parametrize("bad", [0, -2])
def test_a_count_below_one_is_refused(bad):
    with pytest.raises(ValueError, match=r"set_num_threads: n must be a positive integer"):
        mdl.set_num_threads(bad)


@pytest.mark.parametrize("bad", [1.5, "2", None, True])
def test_a_count_that_is_not_an_int_is_refused(bad):
    with pytest.raises(TypeError, match=r"set_num_threads: n must be a positive integer"):
        mdl.set_num_threads(bad)


def _in_a_fresh_process(env: dict) -> subprocess.CompletedProcess:
    code = "import minidl; print(minidl.get_num_threads())"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_environment_variable_sets_the_default():
    done = _in_a_fresh_process({"MINIDL_NUM_THREADS": "3"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"


def test_the_default_is_the_cores_this_process_may_use():
    env = {k: v for k, v in os.environ.items() if k != "MINIDL_NUM_THREADS"}
    code = "import minidl; print(minidl.get_num_threads())"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("bad", ["0", "two", "-1"])
def test_a_bad_environment_variable_is_a_clear_error(bad):
    done = _in_a_fresh_process({"MINIDL_NUM_THREADS": bad})
    assert done.returncode != 0
    assert "MINIDL_NUM_THREADS" in done.stderr or "set_num_threads" in done.stderr


def test_blas_follows_the_knob():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    mdl.set_num_threads(2)
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert blas and all(i["num_threads"] == 2 for i in blas)
    mdl.set_num_threads(1)
    blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
    assert all(i["num_threads"] == 1 for i in blas)


# ---- the parts -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, nbytes", [(1, 10**9), (7, 10**9), (128, 10**9), (128, 3 << 17), (5, 0)]
)
def test_parts_cover_the_batch_in_order_and_depend_on_its_size_only(n, nbytes):
    parts = threads.parts(n, nbytes)
    assert parts[0].start == 0 and parts[-1].stop == n
    assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
    sizes = [p.stop - p.start for p in parts]
    assert max(sizes) - min(sizes) <= 1 and len(parts) <= threads.MAX_PARTS
    for count in COUNTS:
        threads.set_num_threads(count)
        assert threads.parts(n, nbytes) == parts


def test_over_batch_joins_sums_and_lists_in_part_order(small_parts):
    x = np.arange(24.0).reshape(6, 4)
    mdl.set_num_threads(2)
    doubled, total, pieces = threads.over_batch(
        lambda x: (2 * x, x.sum(axis=0), x), x, combine=("join", "sum", "list")
    )
    np.testing.assert_array_equal(doubled, 2 * x)
    np.testing.assert_array_equal(total, x.sum(axis=0))
    np.testing.assert_array_equal(np.concatenate(pieces), x)
    assert len(pieces) == len(threads.parts(6, x.nbytes)) > 1


def test_a_failing_part_raises_in_the_caller(small_parts):
    mdl.set_num_threads(2)

    def fails(x):
        raise RuntimeError("part failed")

    with pytest.raises(RuntimeError, match="part failed"):
        threads.over_batch(fails, np.zeros((8, 100)))


# ---- every op: forward and backward, the same bits for any thread count ----------------------
def _conv(x, w, b):
    return F.conv2d(x, w, b, stride=1, padding=2, groups=2)


OPS = {  # name: (function, input shapes); every input gets a gradient
    "conv2d": (_conv, [(5, 4, 9, 9), (6, 2, 5, 5), (6,)]),
    "conv2d_stride": (lambda x, w: F.conv2d(x, w, None, stride=3), [(7, 3, 11, 11), (4, 3, 3, 3)]),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2), [(6, 3, 9, 9)]),
    "local_response_norm": (lambda x: F.local_response_norm(x, 5, 0.5, 0.75, 2.0), [(5, 7, 4, 4)]),
    "relu": (F.relu, [(6, 3, 5, 5)]),
    "bias_relu": (F.bias_relu, [(6, 3, 5, 5), (3,)]),
    "dropout": (lambda x: F.dropout(x, 0.4), [(9, 40)]),
    "batch_norm": (
        lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
        [(6, 5, 3, 3), (5,), (5,)],
    ),
    "linear": (F.linear, [(7, 30), (11, 30), (11,)]),
}


def run_op(name: str, count: int):
    fn, shapes = OPS[name]
    mdl.set_num_threads(count)
    mdl.manual_seed(0)  # dropout's key
    rng = np.random.default_rng(1)
    inputs = [mdl.tensor(rng.standard_normal(s), requires_grad=True) for s in shapes]
    y = fn(*inputs)
    y.backward(mdl.tensor(rng.standard_normal(y.shape)))
    return [y.numpy()] + [t.grad.numpy() for t in inputs]


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_gives_the_same_bits_for_any_thread_count(name, small_parts):
    one = run_op(name, 1)
    for count in COUNTS[1:]:
        for a, b in zip(one, run_op(name, count)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(OPS))
def test_the_parts_compute_the_whole_batchs_numbers(name, small_parts, monkeypatch):
    split = run_op(name, 2)
    monkeypatch.setattr(threads, "MAX_PARTS", 1)  # one part: the unsplit NumPy code
    whole = run_op(name, 2)
    for a, b in zip(split, whole):
        # sums over the batch (conv's dw and db) are added part by part: a rounding apart
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_dropout_masks_are_the_whole_batchs(small_parts, monkeypatch):
    x = mdl.tensor(np.ones((16, 64), np.float32))
    mdl.set_num_threads(2)
    mdl.manual_seed(5)
    split = F.dropout(x, 0.5).numpy()
    monkeypatch.setattr(threads, "MAX_PARTS", 1)
    mdl.manual_seed(5)
    whole = F.dropout(x, 0.5).numpy()
    assert len(threads.parts(16, x.numpy().nbytes)) == 1
    np.testing.assert_array_equal(split, whole)
    assert 0.3 < (split == 0).mean() < 0.7


def test_batch_norm_statistics_are_the_whole_batchs(small_parts, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6, 5, 5)) * 3 + 1e3

    def running(count, max_parts):
        monkeypatch.setattr(threads, "MAX_PARTS", max_parts)
        mdl.set_num_threads(count)
        bn = mdl.nn.BatchNorm2d(6).double()
        bn(mdl.tensor(x))
        return bn.running_mean.numpy(), bn.running_var.numpy()

    whole = running(1, 1)
    split = running(1, 8)
    for count in COUNTS[1:]:
        for a, b in zip(split, running(count, 8)):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    np.testing.assert_allclose(whole[0], 0.9 * 0 + 0.1 * x.mean(axis=(0, 2, 3)), rtol=1e-12)


# ---- whole training steps ------------------------------------------------------------------------
def training_step(make_model, shape, classes, count, batch):
    """One SGD step on a fixed batch with ``count`` threads -> the loss, every gradient and
    every updated parameter."""
    mdl.set_num_threads(count)
    mdl.manual_seed(0)
    model = make_model()
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.standard_normal((batch, *shape)).astype(np.float32))
    target = rng.integers(0, classes, batch)
    loss = F.cross_entropy(model(x), target)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad.numpy().copy() for p in model.parameters()]
    opt.step()
    return [loss.numpy()] + grads + [p.numpy() for p in model.parameters()]


@pytest.mark.parametrize(
    "make_model, shape, classes, batch",
    [
        (lambda: SmallAlexNet(num_classes=10, in_channels=1, dropout=0.3), (1, 28, 28), 10, 16),
        (lambda: SmallAlexNet(norm="batch"), (1, 28, 28), 10, 16),
        (lambda: AlexNet(num_classes=20), (3, 227, 227), 20, 3),
    ],
    ids=["small_alexnet", "small_alexnet_batchnorm", "alexnet"],
)
def test_a_training_step_gives_the_same_bits_for_any_thread_count(
    make_model, shape, classes, batch
):
    # the real part sizes (no small_parts): what training runs
    one = training_step(make_model, shape, classes, 1, batch)
    for count in (2, 3):
        for a, b in zip(one, training_step(make_model, shape, classes, count, batch)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2, rule="paper"),
        lambda ps: optim.Adam(ps, lr=0.1, weight_decay=1e-2),
    ],
    ids=["sgd", "sgd_paper", "adam"],
)
def test_optimizer_steps_give_the_whole_arrays_bits(make_optimizer, small_parts, monkeypatch):
    def steps(count, max_parts):
        monkeypatch.setattr(threads, "MAX_PARTS", max_parts)
        mdl.set_num_threads(count)
        rng = np.random.default_rng(0)
        params = [
            mdl.nn.Parameter(rng.standard_normal(s).astype(np.float32)) for s in [(70, 3), (5,)]
        ]
        opt = make_optimizer(params)
        for _ in range(3):
            for p in params:
                p.grad = mdl.tensor(rng.standard_normal(p.shape).astype(np.float32))
            opt.step()
        return [p.numpy() for p in params]

    whole = steps(1, 1)
    for count in COUNTS:
        for a, b in zip(whole, steps(count, 8)):
            np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_gets_its_own_pool(small_parts):
    """The parent's workers are not in a fork (a DataLoader worker): the child must not wait on
    them (it would hang; an alarm ends it after 30 s)."""
    mdl.set_num_threads(2)
    x = np.arange(64.0).reshape(16, 4)
    threads.over_batch(np.negative, x)  # the parent's pool exists
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if its split finishes with the right numbers
        signal.alarm(30)
        ok = np.array_equal(threads.over_batch(np.negative, x), -x)
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
