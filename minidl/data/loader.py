"""DataLoader: batches in a seeded order, prepared ahead in background threads.

Epoch e visits the samples in the order ``default_rng([seed, e]).permutation(n)`` and batch b
draws its random transforms from ``default_rng([seed, e, b])``: the batches are the same whatever
the number of threads, and training resumed from a checkpoint (which records ``epoch``) sees the
batches it would have seen. NumPy and Pillow release the GIL in their heavy loops, so threads
overlap data preparation with the model's work.

Under an MPI launcher (``minidl.distributed``) each of the W ranks takes its own contiguous part
of every global batch: rank r gets ``np.array_split(batch, W)[r]``. The global order and batches
are the single-process ones (the seed is the same on every rank), so K steps on 2 ranks with
B/2 samples each are K steps of one process with batch B. Each rank's random transforms draw from
``default_rng([seed, e, b, r])``: independent across ranks, but not the single process's draws.

A dataset either makes whole batches, ``dataset.batch(indices, rng) -> (x, y)`` (minidl's own,
which draw their random transforms from ``rng``), or is PyTorch-style, ``dataset[i] -> (x, y)``
with ``len(dataset)``: the loader then stacks the samples (``np.stack`` of the x's, the y's as an
array) and the dataset draws its own randomness.

Each batch is a ``Batch``: it unpacks as ``x, y``, and ``batch.first`` says where it starts in
the global batch (0 in one process). The training loop hands ``first`` to the model's Dropout
layers, so the ranks together draw the masks one process draws (docs/distributed.md).
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batch(tuple):
    """One batch: the pair ``(x, y)``, which it unpacks as, and ``first``, the position of its
    first sample in the global batch (``DataLoader.shard_starts``; 0 in one process)."""

    first: int

    def __new__(cls, x, y, first: int = 0):
        batch = super().__new__(cls, (x, y))
        batch.first = int(first)
        return batch


def _check_dataset(dataset) -> None:
    if hasattr(dataset, "batch") and hasattr(dataset, "__len__"):
        return
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):
        return
    raise TypeError(
        f"DataLoader: the dataset (a {type(dataset).__name__}) has neither batch(indices, rng) "
        "-> (x, y) nor __getitem__(i) -> (x, y) with __len__(); give it one of them"
    )


def stack_samples(dataset, indices) -> tuple[np.ndarray, np.ndarray]:
    """A PyTorch-style dataset's samples ``dataset[i] -> (x, y)`` as one batch:
    x (B, ...) stacked, y (B, ...) as an array."""
    xs, ys = [], []
    for i in indices:
        sample = dataset[int(i)]
        if not isinstance(sample, (tuple, list)) or len(sample) != 2:
            raise TypeError(
                f"DataLoader: {type(dataset).__name__}[{int(i)}] returned a "
                f"{type(sample).__name__}, expected an (x, y) pair"
            )
        x, y = (v.numpy() if hasattr(v, "numpy") else v for v in sample)
        xs.append(np.asarray(x))
        ys.append(y)
    return np.stack(xs), np.asarray(ys)


class DataLoader:
    def __init__(
        self,
        dataset,
        batch_size: int = 128,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        workers: int = 2,
        prefetch: int = 4,
        rank: int | None = None,
        world_size: int | None = None,
    ):
        """``batch_size`` is the global batch; ``rank`` and ``world_size`` default to the MPI
        job's (``minidl.distributed``), 0 and 1 in a plain process."""
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        _check_dataset(dataset)
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.workers, self.prefetch = drop_last, workers, prefetch
        self.epoch = 0  # the next epoch __iter__ will produce
        if world_size is None:
            from minidl import distributed

            world_size = distributed.world_size()
            rank = distributed.rank() if rank is None else rank
        self.rank, self.world_size = rank or 0, world_size
        self._check_shards()

    def _check_shards(self) -> None:
        """Every rank must get at least one sample of every batch: refuse a world size that the
        batch size or the data set cannot serve, before any rank waits for another. A batch
        need not split evenly: ``np.array_split`` gives the first ranks one sample more, and
        ``train_step`` weights each rank's gradient by its share (``allreduce_gradients``)."""
        n, w = len(self.dataset), self.world_size
        if not 0 <= self.rank < w:
            raise ValueError(f"DataLoader: rank {self.rank} is outside a world of {w}")
        if w == 1:
            return
        if self.batch_size < w:
            raise ValueError(
                f"DataLoader: a global batch of {self.batch_size} sample(s) cannot give each of "
                f"{w} ranks one; choose a batch size of at least {w}"
            )
        last = n % self.batch_size
        if n < w or (0 < last < w and not self.drop_last):
            raise ValueError(
                f"DataLoader: {n} samples in batches of {self.batch_size} leave a batch of "
                f"{last or n} sample(s), fewer than the {w} ranks; use drop_last=True, another "
                "batch size or fewer ranks"
            )

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> np.ndarray:
        n = len(self.dataset)
        return (
            np.random.default_rng([self.seed, epoch]).permutation(n)
            if self.shuffle
            else np.arange(n)
        )

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of each global batch of ``epoch`` (one process's batches)."""
        order = self.order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The sample indices of each batch this rank reads in ``epoch``."""
        batches = self.global_batches(epoch)
        if self.world_size == 1:
            return batches
        return [np.array_split(batch, self.world_size)[self.rank] for batch in batches]

    def shard_starts(self, epoch: int) -> list[int]:
        """For each batch this rank reads in ``epoch``, where it starts in the global batch:
        ``np.array_split`` gives the first ``L % W`` ranks ``L // W + 1`` samples of a batch of
        L, the others ``L // W``. All 0 in one process. Each batch carries its start
        (``Batch.first``) to dropout, so the ranks draw one process's masks."""
        starts = []
        for batch in self.global_batches(epoch):
            share, extra = divmod(len(batch), self.world_size)
            starts.append(self.rank * share + min(self.rank, extra))
        return starts

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        batches, starts = self.batches(epoch), self.shard_starts(epoch)

        def make(b):
            # one process keeps its (seed, epoch, batch) stream; each rank adds its number
            key = [self.seed, epoch, b] + ([self.rank] if self.world_size > 1 else [])
            if hasattr(self.dataset, "batch"):
                x, y = self.dataset.batch(batches[b], np.random.default_rng(key))
            else:
                x, y = stack_samples(self.dataset, batches[b])
            return Batch(x, y, starts[b])

        if self.workers < 1:
            for b in range(len(batches)):
                yield make(b)
            return
        with ThreadPoolExecutor(self.workers) as pool:
            pending = deque()
            for b in range(len(batches)):
                pending.append(pool.submit(make, b))
                if len(pending) > self.prefetch:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
