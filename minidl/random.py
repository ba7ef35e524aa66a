"""The global seed: ``manual_seed`` makes initialization, shuffling and dropout reproducible.

Every random draw in minidl comes from one NumPy generator. Dropout draws a fresh 64-bit key from
it per call and turns (key, element index) into bits with a counter-based hash, the same on the
CPU and in the CUDA kernel, so a mask does not depend on the device or on the launch shape.
(In data-parallel training the element index counts from the rank's first sample in the global
batch, which the DataLoader yields with each batch: ``Batch.first``, docs/distributed.md.)
"""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> None:
    """Reset the global generator."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def next_key() -> int:
    """A fresh 64-bit key for a counter-based generator (one per dropout call)."""
    return int(_generator.integers(0, 2**63 - 1, dtype=np.int64))
