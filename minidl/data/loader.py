"""DataLoader: batches in a seeded order, prepared ahead in background threads.

Epoch e visits the samples in the order ``default_rng([seed, e]).permutation(n)`` and batch b
draws its random transforms from ``default_rng([seed, e, b])``: the batches are the same whatever
the number of threads, and training resumed from a checkpoint (which records ``epoch``) sees the
batches it would have seen. NumPy and Pillow release the GIL in their heavy loops, so threads
overlap data preparation with the model's work.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np


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
    ):
        if batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be >= 1, got {batch_size}")
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.drop_last, self.workers, self.prefetch = drop_last, workers, prefetch
        self.epoch = 0  # the next epoch __iter__ will produce

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

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1
        order = self.order(epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()

        def make(b):
            return self.dataset.batch(batches[b], np.random.default_rng([self.seed, epoch, b]))

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
