"""Data-parallel training under an MPI launcher: ``mpiexec -n N python train.py``.

Every rank holds the whole model and reads its own part of each global batch (``DataLoader``
shards it). After backward, the ranks' gradients are averaged, so every rank takes the same
optimizer step and the weights stay equal without ever being sent again:

    g = sum_r n_r * g_r / sum_r n_r        (g_r: rank r's mean gradient over its n_r samples)

which is the gradient of the whole global batch, the one a single process would compute.

The engines are the ones people already use: MPI (mpi4py) starts the processes, tells each its
rank, and sums NumPy buffers (``Allreduce`` with ``IN_PLACE``); on GPUs the sums go through NCCL
(``cupy.cuda.nccl``; its unique id travels over MPI, one GPU per rank). Gradients are packed into
a few flat buckets of about 25 MB (PyTorch DDP's default) in parameter order, so AlexNet's
244 MB of float32 gradients make 5 calls instead of 16 (fc6's and fc7's weights travel alone).
``docs/distributed.md`` has the usage, the failure behaviour and the expected scaling.

A plain ``python train.py`` is a world of one: nothing here imports mpi4py unless the process was
started by an MPI launcher, and every function below is then a no-op (``allreduce_`` on a CuPy
array excepted: it still goes through NCCL, which is how one GPU tests that path).
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

from minidl import backend, dtypes

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024  # PyTorch DDP's bucket_cap_mb=25

# Variables that MPI launchers set in each process they start: MPICH/Hydra and Intel MPI
# (PMI_SIZE), Open MPI (OMPI_COMM_WORLD_SIZE), PMIx launchers and Slurm's srun (PMIX_RANK).
_LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class _World:
    """This process's place in the job: the MPI communicator (None in a plain process)."""

    def __init__(self, comm=None, rank=0, size=1, local_rank=0):
        self.comm, self.rank, self.size, self.local_rank = comm, rank, size, local_rank
        self.nccl = None  # the NCCL communicator, made on the first GPU all-reduce
        self.buckets: dict = {}  # layout key -> list[_Bucket]


_world: _World | None = None


def launched_under_mpi() -> bool:
    """True when an MPI launcher started this process (read from its environment)."""
    return any(name in os.environ for name in _LAUNCHER_VARIABLES)


def init(device: str | None = None) -> None:
    """Join the MPI job (once; later calls only choose the GPU).

    Under a launcher: reads rank and world size from ``MPI.COMM_WORLD``, the local rank from the
    ranks sharing this node, and installs an excepthook so that a rank that raises ends the whole
    job. ``device="cuda"`` makes GPU ``local_rank`` this process's current device; call it before
    moving the model. Without a launcher: a world of one, and mpi4py is never imported.
    """
    global _world
    if _world is None:
        _world = _join() if launched_under_mpi() else _World()
    if device is not None and str(device).startswith("cuda") and not backend.emulating():
        backend.use_gpu(_world.local_rank)


def _join() -> _World:
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise RuntimeError(
            "minidl.distributed: this process was started by an MPI launcher but mpi4py is not "
            'installed; install it with pip install "minidl[mpi]"'
        ) from error
    comm = MPI.COMM_WORLD
    # the ranks on this node, numbered from 0: the GPU each one drives
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    world = _World(comm, comm.Get_rank(), comm.Get_size(), local.Get_rank())
    local.Free()
    if world.size > 1:
        sys.excepthook = _abort_on_exception
    return world


def _abort_on_exception(kind, error, tb) -> None:
    """A rank that raises prints its traceback, each line prefixed "rank N:", and aborts the
    job: the other ranks may be waiting for it in an all-reduce and would otherwise hang.
    MPI_Abort makes mpiexec end every process, with a non-zero exit code."""
    lines = "".join(traceback.format_exception(kind, error, tb)).rstrip("\n").split("\n")
    sys.stdout.flush()
    sys.stderr.write("".join(f"rank {_world.rank}: {line}\n" for line in lines))
    sys.stderr.flush()
    _world.comm.Abort(1)


def _get() -> _World:
    if _world is None:
        init()
    return _world


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (0 in a plain process)."""
    return _get().rank


def world_size() -> int:
    """How many processes take part (1 in a plain process)."""
    return _get().size


def local_rank() -> int:
    """This process's rank among those on the same node: the GPU it uses."""
    return _get().local_rank


def is_main() -> bool:
    """True on rank 0, the rank that writes checkpoints, logs and pictures."""
    return _get().rank == 0


def comm():
    """The job's MPI communicator (mpi4py's ``MPI.COMM_WORLD``); None in a plain process."""
    return _get().comm


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written a file the others read)."""
    world = _get()
    if world.size > 1:
        world.comm.Barrier()


# ---- small reductions ----------------------------------------------------------------------------
def allreduce_sum(values) -> list[float]:
    """Sum a few numbers (loss sums, counts) over all ranks; every rank gets the sums."""
    total = np.array(values, dtype=np.float64)
    world = _get()
    if world.size > 1:
        world.comm.Allreduce(_in_place(), total)
    return total.tolist()


def _in_place():
    from mpi4py import MPI

    return MPI.IN_PLACE


def agree(error: Exception | None) -> None:
    """After a step rank 0 alone takes (the run's lock, writing a checkpoint): raise its error on
    every rank, or on none. Without this rank 0 would stop and the other ranks wait for it in
    their next all-reduce, forever. A no-op broadcast of None when all went well; in a world of
    one, ``error`` is simply raised."""
    world = _get()
    if world.size > 1:
        said = world.comm.bcast(None if error is None else (type(error), str(error)), root=0)
        if said is not None and world.rank != 0:
            kind, message = said
            error = kind(f"{message} (rank 0 stopped; so does rank {world.rank})")
    if error is not None:
        raise error


def broadcast_parameters(model) -> None:
    """Make every rank's parameters and buffers equal to rank 0's.

    Goes through ``model.state_dict()``, so buffers (BatchNorm's running statistics) travel with
    the parameters wherever the model lists them there. Runs once, at the start, on the host.
    """
    world = _get()
    if world.size == 1:
        return
    state = model.state_dict()
    layout = [(name, tuple(np.shape(v)), str(np.asarray(v).dtype)) for name, v in state.items()]
    _check_same_everywhere(world, layout, "broadcast_parameters: the model's state_dict")
    for name in state:
        array = np.asarray(backend.to_numpy(state[name]), order="C")  # a 0-d counter stays 0-d
        # MPI has no 16-bit float type: their bits travel (exactly) as uint16
        world.comm.Bcast(
            array.reshape(-1).view(np.uint16) if dtypes.is_16bit(array.dtype) else array, root=0
        )
        state[name] = array
    if world.rank != 0:
        model.load_state_dict(state)


def _check_same_everywhere(world: _World, layout, what: str) -> None:
    """Raise on every rank, naming the ranks that differ, when ``layout`` is not the same."""
    layouts = world.comm.allgather(layout)
    differ = [r for r, other in enumerate(layouts) if other != layouts[0]]
    if differ:
        first = next(
            (a, b) for a, b in zip(layouts[0] + [None], layouts[differ[0]] + [None]) if a != b
        )
        raise ValueError(
            f"{what} differs between ranks: rank {differ[0]} has {first[1]} where rank 0 has "
            f"{first[0]} (ranks {differ} differ from rank 0); every rank must build the same "
            "model and optimizer"
        )


# ---- gradient buckets ----------------------------------------------------------------------------
class _Bucket:
    """Consecutive parameters of one dtype whose gradients travel as one flat buffer: float32
    for 16-bit parameters, so the sum over ranks is taken in float32 (and MPI, which has no
    16-bit float type, can take it); twice the traffic of 16-bit, the same as a float32 run."""

    def __init__(self, params: list, xp):
        self.params = params
        self.offsets = np.cumsum([0] + [p.numel() for p in params]).tolist()
        self.buffer = xp.empty(self.offsets[-1], dtype=dtypes.compute_dtype(params[0].dtype))

    def pack(self, scale: float) -> None:
        for i, p in enumerate(self.params):
            if p.grad is None:
                raise ValueError(
                    f"allreduce_gradients: parameter of shape {p.shape} has no gradient on "
                    f"rank {rank()}; every parameter must take part in the loss on every rank"
                )
            self.buffer[self.offsets[i] : self.offsets[i + 1]] = p.grad.data.reshape(-1)
        if scale != 1.0:
            self.buffer *= scale

    def unpack(self, divisor: float) -> None:
        from minidl.tensor import Tensor

        self.buffer /= divisor
        for i, p in enumerate(self.params):
            # the grad becomes a view of the bucket: no copy; the next backward starts a new one
            view = self.buffer[self.offsets[i] : self.offsets[i + 1]].reshape(p.shape)
            if view.dtype != p.dtype:  # a 16-bit parameter: its gradient rounded back, once
                view = view.astype(p.dtype)
            p.grad = Tensor._wrap(view, p.device, False)


def plan_buckets(params, bucket_bytes: int = DEFAULT_BUCKET_BYTES) -> list[list[int]]:
    """Group parameter indices into buckets: in parameter order, one dtype per bucket, a new
    bucket when the next gradient would take it past ``bucket_bytes`` (a larger gradient gets a
    bucket of its own). AlexNet's float32 gradients at 25 MB: 5 buckets (the convs' 9.3 MB,
    fc6.weight 151 MB, fc6.bias, fc7.weight 67 MB, fc7.bias with fc8 16.4 MB)."""
    if bucket_bytes < 1:
        raise ValueError(f"allreduce_gradients: bucket_bytes must be >= 1, got {bucket_bytes}")
    buckets: list[list[int]] = []
    size, dtype = 0, None
    for i, p in enumerate(params):
        nbytes = p.numel() * np.dtype(p.dtype).itemsize
        if not buckets or p.dtype != dtype or size + nbytes > bucket_bytes:
            buckets.append([])
            size, dtype = 0, p.dtype
        buckets[-1].append(i)
        size += nbytes
    return buckets


def _buckets_for(world: _World, params: list, bucket_bytes: int) -> list[_Bucket]:
    key = (bucket_bytes, tuple(id(p) for p in params), tuple(p.shape for p in params))
    if key not in world.buckets:
        layout = [(p.shape, str(p.dtype)) for p in params] + [bucket_bytes]
        _check_same_everywhere(world, layout, "allreduce_gradients: the parameter list")
        world.buckets[key] = [
            _Bucket([params[i] for i in indices], _array_module(params[indices[0]]))
            for indices in plan_buckets(params, bucket_bytes)
        ]
    return world.buckets[key]


def _array_module(p):
    return backend.xp(p.device)


def allreduce_gradients(
    params, bucket_bytes: int = DEFAULT_BUCKET_BYTES, weight: float | None = None
) -> None:
    """Replace every parameter's gradient by its average over the ranks, in place.

    ``params``: a Module or a list of parameters, the same on every rank. ``weight=None`` takes
    the plain mean (PyTorch DDP: sum / world size); ``weight=n`` (this rank's sample count) the
    weighted mean ``sum_r n_r g_r / sum_r n_r``, exact when the ranks' shares of a batch differ
    (the last, short batch of an epoch). A no-op in a world of one.
    """
    world = _get()
    if world.size == 1:
        return
    params = list(params.parameters() if hasattr(params, "parameters") else params)
    if weight is None:
        scale, divisor = 1.0, float(world.size)
    else:
        scale, divisor = float(weight), allreduce_sum([weight])[0]
    for bucket in _buckets_for(world, params, bucket_bytes):
        bucket.pack(scale)
        allreduce_(bucket.buffer)
        bucket.unpack(divisor)


def allreduce_(buffer) -> None:
    """Sum a contiguous float array over all ranks, in place: MPI on NumPy arrays (the CPU, and
    the kernel emulator's "cuda"; nothing to do in a world of one), NCCL on CuPy arrays (in a
    world of one too: a one-rank communicator, which is how a single GPU tests the path)."""
    world = _get()
    if isinstance(buffer, np.ndarray):
        if buffer.dtype not in (np.float32, np.float64):
            raise TypeError(f"allreduce_: MPI sums float32 or float64 arrays, got {buffer.dtype}")
        if world.size > 1:
            world.comm.Allreduce(_in_place(), buffer)
        return
    nccl = backend.cupy("cuda.nccl")
    kinds = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32}
    kinds["float64"] = nccl.NCCL_FLOAT64
    kinds["bfloat16"] = getattr(nccl, "NCCL_BFLOAT16", 9)  # ncclBfloat16 = 9 (nccl.h)
    if str(buffer.dtype) not in kinds:
        raise TypeError(f"allreduce_: NCCL sums {list(kinds)} arrays, got {buffer.dtype}")
    if not buffer.flags.c_contiguous:
        raise ValueError("allreduce_: NCCL needs a contiguous array")
    _nccl(world).allReduce(
        buffer.data.ptr,
        buffer.data.ptr,  # in place: NCCL allows sendbuff == recvbuff
        buffer.size,
        kinds[str(buffer.dtype)],
        nccl.NCCL_SUM,
        _current_stream().ptr,  # after the packing kernels queued there, before the division
    )


def _current_stream():
    return backend.cupy().cuda.get_current_stream()


def _nccl(world: _World):
    """The NCCL communicator: rank 0 makes the unique id, MPI carries it to the others, and
    each rank joins with the GPU chosen by ``init("cuda")`` current."""
    if world.nccl is None:
        nccl = backend.cupy("cuda.nccl")
        if not nccl.available:
            raise RuntimeError(
                "minidl.distributed: NCCL is not available to CuPy "
                '(pip install "nvidia-nccl-cu13>=2.27" for cupy-cuda13x)'
            )
        unique_id = nccl.get_unique_id() if world.rank == 0 else None
        if world.comm is not None:
            unique_id = world.comm.bcast(unique_id, root=0)
        world.nccl = nccl.NcclCommunicator(world.size, unique_id, world.rank)
    return world.nccl
