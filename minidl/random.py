"""The global seed: ``manual_seed`` makes initialization, shuffling and dropout reproducible.

Every random draw in minidl comes from one NumPy generator. Dropout draws a fresh 64-bit key from
it per call and turns (key, element index) into bits with a counter-based hash, the same on the
CPU and in the CUDA kernel, so a mask does not depend on the device or on the launch shape.
"""

from __future__ import annotations

import contextlib

import numpy as np

_generator = np.random.default_rng(0)
_first_sample = 0  # where this process's batch starts in the global batch (data parallel)


def manual_seed(seed: int) -> None:
    """Reset the global generator."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def next_key() -> int:
    """A fresh 64-bit key for a counter-based generator (one per dropout call)."""
    return int(_generator.integers(0, 2**63 - 1, dtype=np.int64))


def first_sample() -> int:
    """The position of this process's first sample in the global batch (0 in one process)."""
    return _first_sample


@contextlib.contextmanager
def batch_shard(first: int):
    """While inside, this process's batch is the part of a global batch that starts at sample
    ``first`` (``DataLoader.shard_starts``; ``train_epoch`` sets it). Dropout then counts its
    element index from ``first`` samples in, so every rank draws exactly the masks one process
    draws for the same samples (docs/distributed.md)."""
    global _first_sample
    previous, _first_sample = _first_sample, int(first)
    try:
        yield
    finally:
        _first_sample = previous
