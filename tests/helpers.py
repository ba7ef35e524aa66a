"""Shared test helpers: minidl.testing (public, docs/testing.md) under the names our tests use,
and a tiny training problem.

A torch parity test is one call, as tinygrad's ``helper_test_op``::

    check_op([(2, 3, 5, 5), (4, 3, 3, 3)], "nn.functional.conv2d", F.conv2d)
    check_op([x, targets], "nn.functional.cross_entropy", F.cross_entropy)

Here it becomes a skipped test where PyTorch is not installed (after its gradcheck has run).
"""

import numpy as np
import pytest

from minidl import data, nn, testing
from minidl.testing import assert_all_close, assert_close, forward_backward

random = testing.random_array
distinct = testing.distinct_array

__all__ = [
    "assert_all_close",
    "assert_close",
    "check_op",
    "distinct",
    "forward_backward",
    "random",
    "tiny_dataset",
    "tiny_net",
    "torch_forward_backward",
    "without_package",
]


def without_package(name: str) -> str:
    """Python source that, run first in a fresh process, makes ``import name`` (and its
    submodules) fail as on a machine where the package is not installed."""
    return f"""
import sys

class Without:
    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] == {name!r}:
            raise ModuleNotFoundError(f"No module named {{fullname!r}}", name=fullname)

sys.meta_path.insert(0, Without())
"""


def check_op(inputs, torch_fn, minidl_fn, *, seed=0, gradcheck=True):
    """``minidl.testing.check_op``, skipped where torch is missing (see its docstring)."""
    try:
        return testing.check_op(inputs, torch_fn, minidl_fn, seed=seed, gradcheck=gradcheck)
    except testing.TorchMissing as err:
        pytest.skip(str(err))


def torch_forward_backward(torch, fn, arrays, seed=0):
    """``minidl.testing.torch_forward_backward``; ``torch`` is the test's importorskip."""
    return testing.torch_forward_backward(fn, arrays, seed)


# ---- a tiny training problem (tests/test_training.py, test_faults.py, test_precision_training.py)
def tiny_dataset(size, nan_image=None, dtype=np.float32):
    """``size`` random 12x12 gray images with 3-class labels, scaled to [0, 1] when loaded.
    ``nan_image``: the index of an image whose pixel (3, 4) is NaN."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, 12, 12)).astype(dtype)
    if nan_image is not None:
        images[nan_image, 3, 4] = np.nan
    labels = rng.integers(0, 3, size)
    return data.ArrayDataset(images, labels, lambda x, rng: x / 255.0)


def tiny_net(channels=4, dropout=None):
    """An AlexNet in miniature for tiny_dataset's images: conv, ReLU, overlapping max-pool,
    (dropout,) a linear classifier. (N, 1, 12, 12) -> (N, 3)."""
    layers = [nn.Conv2d(1, channels, 3), nn.ReLU(), nn.MaxPool2d(3, 2)]
    if dropout is not None:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * 4 * 4, 3))
