"""Data-parallel training (minidl/distributed.py): two ranks under ``mpiexec -n 2`` against one
process. The ranks run tests/distributed_worker.py; every launch has a timeout, so a hang fails
the test instead of hanging CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minidl import backend, data, distributed, train
from tests import distributed_worker as worker

WORKER = Path(__file__).with_name("distributed_worker.py")


def mpiexec() -> str | None:
    """The launcher from the mpich wheel (in the environment's bin/, beside python)."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def launch(scenario: str, out: Path, ranks: int = 2, timeout: float = 60, env=None, script=None):
    """Run the worker (or ``script`` with ``scenario`` as its arguments) on ``ranks`` processes;
    returns (exit code, output, seconds)."""
    pytest.importorskip("mpi4py")
    if mpiexec() is None:
        pytest.skip('mpiexec not found: pip install "minidl[mpi]"')
    env = dict(
        os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg", **(env or {})
    )
    program = [str(script), *scenario.split()] if script else [str(WORKER), scenario, str(out)]
    command = [mpiexec(), "-n", str(ranks), sys.executable, *program]
    start = time.perf_counter()
    done = subprocess.run(
        ["timeout", "-k", "5", str(timeout), *command],
        stdin=subprocess.DEVNULL,  # never pytest's stdin: an xdist worker's is its channel, and
        capture_output=True,  # mpiexec would forward it to rank 0 and fail when it is not read
        text=True,
        env=env,
        cwd=Path(__file__).parents[1],
    )
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def run_ok(scenario: str, out: Path, env=None, ranks: int = 2) -> dict:
    code, output, _ = launch(scenario, out, ranks=ranks, env=env)
    assert code == 0, f"mpiexec -n {ranks} ... {scenario} failed ({code}):\n{output[-3000:]}"
    with np.load(out / "result.npz") as f:
        return {k: f[k] for k in f.files}


# ---- one process: the world of one, the bucket plan, the shards -----------------------------
def test_a_plain_process_is_a_world_of_one_without_mpi4py():
    code = (
        "import sys; from minidl import distributed as d, train; "
        "assert (d.rank(), d.world_size(), d.local_rank(), d.is_main()) == (0, 1, 0, True); "
        "assert 'mpi4py' not in sys.modules, 'mpi4py imported in a plain process'"
    )
    env = {k: v for k, v in os.environ.items() if k not in distributed._LAUNCHER_VARIABLES}
    subprocess.run(["timeout", "60", sys.executable, "-c", code], check=True, env=env)


class FakeParam:
    def __init__(self, numel, dtype=np.float32):
        self.shape, self.dtype, self._numel = (numel,), np.dtype(dtype), numel

    def numel(self):
        return self._numel


def test_buckets_follow_parameter_order_and_the_byte_cap():
    mb = 1024 * 1024
    params = [FakeParam(n) for n in (1 * mb, 2 * mb, 4 * mb, 1 * mb, 1)]  # float32: 4 bytes each
    assert distributed.plan_buckets(params, 12 * mb) == [[0, 1], [2], [3, 4]]
    assert distributed.plan_buckets(params, 100 * mb) == [[0, 1, 2, 3, 4]]
    # a gradient larger than the cap travels alone; a new dtype starts a new bucket
    mixed = [FakeParam(10), FakeParam(10, np.float64), FakeParam(10, np.float64)]
    assert distributed.plan_buckets(mixed, 8) == [[0], [1], [2]]
    assert distributed.plan_buckets(mixed, 1000) == [[0], [1, 2]]


ALEXNET_SHAPES = [  # the paper's AlexNet (groups=2), weight then bias, layer by layer
    (96, 3, 11, 11), (96,), (256, 48, 5, 5), (256,), (384, 256, 3, 3), (384,),
    (384, 192, 3, 3), (384,), (256, 192, 3, 3), (256,),
    (4096, 9216), (4096,), (4096, 4096), (4096,), (1000, 4096), (1000,),
]  # fmt: skip


def test_alexnet_gradients_make_five_buckets_at_25_mb():
    params = [FakeParam(int(np.prod(shape))) for shape in ALEXNET_SHAPES]
    assert sum(p.numel() for p in params) == 60_965_224  # 244 MB of float32 gradients
    # the five convs (9.3 MB), fc6.weight (151 MB), fc6.bias, fc7.weight (67 MB), the rest
    assert distributed.plan_buckets(params) == [list(range(10)), [10], [11], [12], [13, 14, 15]]


def shard_lists(n, batch_size, world, epoch=0, drop_last=False):
    ds = worker.IndexDataset(n)
    return [
        data.DataLoader(ds, batch_size, True, 5, drop_last, rank=r, world_size=world).batches(epoch)
        for r in range(world)
    ]


@pytest.mark.parametrize("n, batch_size, world", [(37, 8, 2), (40, 8, 4), (30, 6, 3)])
def test_shards_are_disjoint_and_put_together_give_the_single_process_batches(n, batch_size, world):
    single = data.DataLoader(worker.IndexDataset(n), batch_size, shuffle=True, seed=5).batches(0)
    ranks = shard_lists(n, batch_size, world)
    assert all(len(r) == len(single) for r in ranks)  # every rank takes every step
    for b, batch in enumerate(single):
        parts = [r[b] for r in ranks]
        assert np.array_equal(np.concatenate(parts), batch)  # rank order = the global order
        assert all(len(p) == batch_size // world for p in parts[:-1]) or b == len(single) - 1


@pytest.mark.parametrize(
    "n, batch_size, world, words",
    [
        (32, 1, 2, "a global batch of 1 sample(s) cannot give each of 2 ranks one"),
        (33, 8, 2, "leave a batch of 1 sample(s), fewer than the 2 ranks"),
        (3, 4, 4, "leave a batch of 3 sample(s), fewer than the 4 ranks"),
    ],
)
def test_a_world_size_the_data_cannot_serve_is_refused(n, batch_size, world, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        shard_lists(n, batch_size, world)


def test_drop_last_serves_a_short_last_batch():
    assert len(shard_lists(33, 8, 2, drop_last=True)[1]) == 4


def test_a_checkpoint_from_two_ranks_is_refused_by_one_process(tmp_path):
    model = worker.small_net()
    train.save_checkpoint(tmp_path / "c.npz", model)
    with np.load(tmp_path / "c.npz") as f:
        arrays = {k: f[k] for k in f.files}
    arrays["world_size"] = np.array(2)
    np.savez(tmp_path / "two.npz", **arrays)
    train.load_checkpoint(tmp_path / "c.npz", model)  # the same world size: fine
    with pytest.raises(ValueError, match="written by a run on 2 process"):
        train.load_checkpoint(tmp_path / "two.npz", model)


# ---- two ranks under mpiexec ---------------------------------------------------------------
def test_steps_on_two_ranks_equal_steps_in_one_process(tmp_path):
    """8 SGD steps (momentum, weight decay) with global batch 8: 4 + 4 samples on two ranks, the
    last batch of each epoch 3 + 2, against 8 in this process, float64."""
    ranks = run_ok("steps", tmp_path)
    single = worker.train_steps()
    for name, value in single.items():
        np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(ranks[f"rank1/{name}"], ranks[f"rank0/{name}"])


def test_steps_with_dropout_on_two_ranks_equal_steps_in_one_process(tmp_path):
    """The same 8 steps through Dropout(0.5): each rank counts dropout's elements from where its
    part of the global batch starts (the loader's Batch.first, handed to the Dropout layers), so
    the ranks draw one process's masks, and the weights agree to float64 round-off (an uneven
    last batch, 3 + 2, included)."""
    ranks = run_ok("steps_dropout", tmp_path)
    single = worker.train_steps(dropout=True)
    baseline = worker.train_steps()
    assert not np.allclose(single["loss"], baseline["loss"])  # the dropout did act
    for name, value in single.items():
        np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(ranks[f"rank1/{name}"], ranks[f"rank0/{name}"])


def test_steps_on_three_ranks_with_uneven_shares_equal_steps_in_one_process(tmp_path):
    """A global batch of 8 on three ranks is 3 + 3 + 2 and the last batch of 5 is 2 + 2 + 1:
    the gradients are weighted by each rank's share and dropout counts from each share's start,
    so the weights are one process's (until 2026-12-05 a batch had to be a multiple of the world
    size, and `mpiexec -n 3` could not run the main job: its evaluation batch is 500)."""
    ranks = run_ok("steps_dropout", tmp_path, ranks=3)
    single = worker.train_steps(dropout=True)
    for name, value in single.items():
        np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=1e-12, atol=1e-14)
        for r in (1, 2):
            np.testing.assert_array_equal(ranks[f"rank{r}/{name}"], ranks[f"rank0/{name}"])


@pytest.mark.parametrize("ranks", [2, 3])
def test_batchnorm_on_several_ranks_normalizes_with_the_whole_batchs_statistics(tmp_path, ranks):
    """BatchNorm2d and BatchNorm1d in training on 2 and 3 ranks: the statistics and the
    backward's sums are the whole global batch's (ops/batchnorm_ranks.py), so the weights and the
    running statistics are one process's. On 3 ranks the last batch of 5 is 2 + 2 + 1: a rank's
    one-sample part has no variance of its own, and BatchNorm1d refused it at the end of the
    epoch, losing the epoch's work (Flowers-17 on several ranks)."""
    result = run_ok("steps_batchnorm", tmp_path, ranks=ranks)
    single = worker.train_steps(batchnorm=True)
    assert any("running_var" in name for name in single)
    for name, value in single.items():
        np.testing.assert_allclose(result[f"rank0/{name}"], value, rtol=1e-10, atol=1e-12)
        for r in range(1, ranks):
            np.testing.assert_array_equal(result[f"rank{r}/{name}"], result[f"rank0/{name}"])


def test_batchnorm_across_ranks_on_the_gpu_branch_under_the_emulator(tmp_path, monkeypatch):
    """The same on the kernels' branch (MINIDL_CUDA_EMULATE=1): the sums travel between the
    statistics kernel and the forward one, and between the two backward kernels."""
    env = {"MINIDL_CUDA_EMULATE": "1", "DISTRIBUTED_WORKER_DEVICE": "cuda"}
    result = run_ok("steps_batchnorm", tmp_path, env=env, ranks=3)
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    monkeypatch.setattr(worker, "DEVICE", "cuda")
    for name, value in worker.train_steps(batchnorm=True).items():
        for r in range(3):
            np.testing.assert_allclose(result[f"rank{r}/{name}"], value, rtol=1e-9, atol=1e-11)


def test_bfloat16_steps_on_two_ranks_follow_one_process(tmp_path):
    """The same 8 steps with a bfloat16 net: rank 0's bfloat16 weights are broadcast bit for bit
    (MPI has no 16-bit type), the gradients are summed in float32 buckets, both ranks end with
    the same bfloat16 weights, close to one process's (each rank rounds its own half-batch
    gradient to bfloat16, one process the whole batch's, so not bit-equal)."""
    ranks = run_ok("steps_bf16", tmp_path)
    single = worker.train_steps("bf16")
    assert set(ranks["rank0/dtype"]) == {"bfloat16"}
    for name, value in single.items():
        if name.startswith("param/"):
            np.testing.assert_array_equal(ranks[f"rank1/{name}"], ranks[f"rank0/{name}"])
            np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=0.03, atol=0.01)
    np.testing.assert_allclose(ranks["rank0/loss"], single["loss"], rtol=0.03)


def test_every_rank_reads_its_shard_of_the_single_process_batches(tmp_path):
    ranks = run_ok("shards", tmp_path)
    single = worker.shards()
    for e, batches in enumerate(single):
        for b, batch in enumerate(batches):
            parts = [ranks[f"rank{r}/epoch{e}/batch{b}"] for r in (0, 1)]
            assert not set(parts[0]) & set(parts[1])
            assert np.array_equal(np.concatenate(parts), batch)
        covered = np.concatenate([ranks[k] for k in ranks if k.split("/")[1] == f"epoch{e}"])
        assert sorted(covered) == list(range(37))


def test_parameters_and_buffers_are_broadcast_from_rank_0(tmp_path):
    ranks = run_ok("broadcast", tmp_path)
    names = [k.split("/", 1)[1] for k in ranks if k.startswith("rank0/")]
    assert "state/1.running_mean" in names
    for i, name in enumerate(n for n in names if "running" not in n and "batches" not in n):
        assert (ranks[f"rank1/{name}"] == i).all()  # rank 0 filled parameter i with i
    assert (ranks["rank1/state/1.running_mean"] == 100.0).all()  # rank 0's buffer, not 101
    counter = ranks["rank1/state/1.num_batches_tracked"]
    assert counter.shape == () and counter.dtype == np.int64 and counter == 7  # 0-d stays 0-d


def test_fit_on_two_ranks_writes_only_from_rank_0_and_resumes_exactly(tmp_path):
    ranks = run_ok("fit", tmp_path)
    for run in ("straight", "first", "resumed"):
        assert (tmp_path / run / "rank0" / "checkpoint.npz").is_file()
        assert (tmp_path / run / "rank0" / "log.csv").is_file()
        assert not (tmp_path / run / "rank1").exists(), f"rank 1 wrote into {run}/"
    single = worker.fit_runs(tmp_path / "single")
    for name, value in single.items():
        if name.startswith(("straight/", "resumed/")):
            np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=1e-12, atol=1e-14)
            np.testing.assert_array_equal(ranks[f"rank1/{name}"], ranks[f"rank0/{name}"])
    # sharded evaluation, summed over the ranks: the single process's figures
    np.testing.assert_allclose(ranks["rank0/test_loss"], single["test_loss"], rtol=1e-9)
    np.testing.assert_array_equal(ranks["rank0/test_top1"], single["test_top1"])
    np.testing.assert_array_equal(ranks["rank1/test_top1"], single["test_top1"])


def test_fit_evaluates_with_rank_0s_batchnorm_statistics_on_every_rank(tmp_path):
    ranks = run_ok("fit_batchnorm", tmp_path)
    for name in ("state/1.running_mean", "state/1.running_var"):
        assert not np.all(ranks[f"rank0/{name}"] == ranks[f"rank0/{name}"][0])  # they moved
        np.testing.assert_array_equal(ranks[f"rank1/{name}"], ranks[f"rank0/{name}"])


@pytest.mark.parametrize(
    "scenario, says",
    [
        ("cannot_lock", "is in use by another run (process "),
        ("cannot_save", "could not be written: File too large; none was there"),
    ],
)
def test_when_rank_0_cannot_write_every_rank_stops_with_its_error(tmp_path, scenario, says):
    """Rank 0 alone holds the run's lock and writes the checkpoint; when it cannot, it stopped
    and the other ranks waited for it in their next all-reduce, forever. Now every rank raises
    rank 0's CheckpointError (distributed.agree), and the job ends."""
    result = run_ok(scenario, tmp_path)
    assert says in str(result["rank0/error"]), result
    assert str(result["rank1/error"]).startswith(str(result["rank0/error"])), result
    assert "rank 0 stopped; so does rank 1" in str(result["rank1/error"])


def test_a_rank_that_raises_ends_the_job_within_seconds(tmp_path):
    code, output, seconds = launch("fail", tmp_path, timeout=60)
    assert code not in (0, 124, 137), f"exit code {code}:\n{output[-3000:]}"
    assert "rank 1: RuntimeError: planted failure on rank 1" in output, output[-3000:]
    assert seconds < 20, f"the job took {seconds:.1f} s to end after rank 1 raised"


def test_a_global_batch_the_ranks_cannot_split_fails_the_job_clearly(tmp_path):
    code, output, seconds = launch("batch1", tmp_path, timeout=60)
    assert code not in (0, 124, 137), f"exit code {code}:\n{output[-3000:]}"
    assert "a global batch of 1 sample(s) cannot give each of 2 ranks one" in output, output[-3000:]
    assert "rank 0: " in output or "rank 1: " in output
    assert seconds < 20


def test_ranks_with_different_models_fail_the_job_naming_the_difference(tmp_path):
    code, output, seconds = launch("mismatch", tmp_path, timeout=60)
    assert code not in (0, 124, 137), f"exit code {code}:\n{output[-3000:]}"
    assert "the model's state_dict differs between ranks: rank 1 has" in output, output[-3000:]
    assert "(4, 4)" in output and "(3, 4)" in output  # the two shapes of 0.weight
    assert seconds < 20


def test_the_papers_two_towers_on_two_ranks_equal_the_grouped_alexnet(tmp_path):
    """examples/two_tower_alexnet.py: model parallelism, one tower per rank, exchanging
    activations at conv3, fc6, fc7 and fc8; 2 SGD steps in float64 against AlexNet(groups=2).
    LRN's alpha is 1, so that the channels a tower borrows across its edge matter."""
    script = Path(__file__).parents[1] / "examples" / "two_tower_alexnet.py"
    code, output, _ = launch("--steps 2 --alpha 1 --tolerance 1e-12", tmp_path, script=script)
    assert code == 0, f"exit code {code}:\n{output[-3000:]}"
    assert "largest |two towers - one process| over the weights after 2 steps" in output


# ---- NCCL ----------------------------------------------------------------------------------------
class FakeNccl:
    """Records what minidl asks of ``cupy.cuda.nccl``: its documented names and signatures
    (NcclCommunicator(ndev, commId, rank).allReduce(sendbuf, recvbuf, count, datatype, op,
    stream)), so the GPU path's plumbing is checked on machines without NCCL."""

    available = True
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64, NCCL_SUM = 6, 7, 8, 0
    calls: list = []

    @staticmethod
    def get_unique_id():
        return b"unique id"

    class NcclCommunicator:
        def __init__(self, ndev, commId, rank):
            FakeNccl.calls.append(("init", ndev, commId, rank))

        def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):
            FakeNccl.calls.append(("allReduce", sendbuf, recvbuf, count, datatype, op, stream))


class FakeDeviceArray:
    """What the NCCL path reads of a CuPy array."""

    def __init__(self, size, dtype, ptr):
        self.size, self.dtype = size, np.dtype(dtype)
        self.nbytes = size * self.dtype.itemsize
        self.data = type("Memory", (), {"ptr": ptr})()
        self.flags = type("Flags", (), {"c_contiguous": True})()


def test_the_nccl_path_calls_cupys_documented_api(monkeypatch):
    cupy_cuda = pytest.importorskip("cupy.cuda")
    FakeNccl.calls = []
    monkeypatch.setattr(cupy_cuda, "nccl", FakeNccl, raising=False)
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", FakeNccl)  # what backend.cupy() imports
    stream = type("Stream", (), {"ptr": 77})()
    monkeypatch.setattr(distributed, "_current_stream", lambda: stream)
    monkeypatch.setattr(distributed, "_world", distributed._World())  # a world of one
    distributed.allreduce_(FakeDeviceArray(1000, np.float32, ptr=4096))
    distributed.allreduce_(FakeDeviceArray(10, np.float64, ptr=8192))
    assert FakeNccl.calls == [
        ("init", 1, b"unique id", 0),  # one communicator, made once
        ("allReduce", 4096, 4096, 1000, FakeNccl.NCCL_FLOAT32, FakeNccl.NCCL_SUM, 77),
        ("allReduce", 8192, 8192, 10, FakeNccl.NCCL_FLOAT64, FakeNccl.NCCL_SUM, 77),
    ]
    with pytest.raises(TypeError, match="NCCL sums"):
        distributed.allreduce_(FakeDeviceArray(10, np.int32, ptr=1))


# ---- NCCL on a GPU -------------------------------------------------------------------------
@pytest.mark.gpu
def test_nccl_sums_in_place_on_a_one_rank_communicator():
    if not backend.gpu_available():
        pytest.skip("no NVIDIA GPU with CuPy on this machine")
    cp = backend.cupy()
    distributed.init("cuda")
    for dtype in (np.float16, np.float32, np.float64):
        x = cp.arange(1000, dtype=dtype)
        before = x.copy()
        distributed.allreduce_(x)  # one rank: the sum is the array itself, through NCCL
        cp.cuda.get_current_stream().synchronize()
        assert cp.array_equal(x, before)


@pytest.mark.gpu
def test_steps_on_two_gpus_equal_steps_in_one_process(tmp_path):
    if not backend.gpu_available() or backend.cupy().cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two NVIDIA GPUs (NCCL takes one GPU per rank)")
    ranks = run_ok("steps", tmp_path, env={"DISTRIBUTED_WORKER_DEVICE": "cuda"})
    single = worker.train_steps()
    for name, value in single.items():
        np.testing.assert_allclose(ranks[f"rank0/{name}"], value, rtol=1e-10, atol=1e-12)


def test_the_main_job_runs_on_three_ranks(tmp_path):
    """`mpiexec -n 3` of the README's main job on a small Fashion-MNIST look-alike: training
    batches of 32 (11 + 11 + 10) and the evaluation batch of 500 (40 test images: 14 + 13 + 13)
    split unevenly, and rank 0 reports the single process's accuracy."""
    from tests.test_examples import small_copy

    small_copy(tmp_path / "data")
    script = Path(__file__).parents[1] / "examples" / "train_fashion_mnist.py"
    flags = f"--data {tmp_path / 'data'} --epochs 1 --batch-size 32 --no-progress --workers 0"
    code, output, _ = launch(
        f"{flags} --out {tmp_path / 'run'}", tmp_path, ranks=3, timeout=120, script=script
    )
    assert code == 0, output[-3000:]
    last = [line for line in output.splitlines() if line.startswith("test accuracy: ")]
    assert len(last) == 1, output[-3000:]  # rank 0 alone prints
    single = subprocess.run(
        [sys.executable, str(script), *flags.split(), "--out", str(tmp_path / "one")],
        capture_output=True,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg"),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    assert single.stdout.splitlines()[-1] == last[0]


def test_device_cuda_without_a_gpu_ends_the_job_with_minidls_message(tmp_path):
    """--device cuda on a machine without a GPU or driver: each rank says what is missing (and
    that MINIDL_CUDA_EMULATE=1 emulates one) and the job ends; it was CuPy's raw
    CUDARuntimeError from the MPI set-up."""
    pytest.importorskip("cupy")
    if backend.gpu_available():
        pytest.skip("this machine has a GPU")
    script = Path(__file__).parents[1] / "examples" / "train_fashion_mnist.py"
    code, output, seconds = launch(
        f"--device cuda --out {tmp_path / 'run'}",
        tmp_path,
        script=script,
        env={"MINIDL_CUDA_EMULATE": "0"},  # the real CUDA branch, whatever the caller set
    )
    assert code not in (0, 124, 137), output[-3000:]
    said = "RuntimeError: device='cuda' needs an NVIDIA GPU and driver"
    assert f"rank 0: {said}" in output or f"rank 1: {said}" in output, output  # the first to end
    assert "MINIDL_CUDA_EMULATE=1" in output
    assert seconds < 30
