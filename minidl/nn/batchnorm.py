"""BatchNorm1d and BatchNorm2d: F.batch_norm with a learned affine and running statistics.

PyTorch's constructor and defaults: ``eps=1e-5, momentum=0.1, affine=True,
track_running_stats=True``; weight starts at 1, bias at 0, running_mean at 0, running_var at 1.
The running statistics are buffers (``Module.register_buffer``): saved in ``state_dict`` and in
checkpoints, moved by ``to(device)``, never updated by an optimizer. ``momentum=None`` makes the
running statistics a cumulative average, ``running += (batch - running) / num_batches_tracked``.
PyTorch's int64 ``num_batches_tracked`` buffer counts the training batches of every layer with
running statistics, so the state dicts of the two frameworks have the same keys; a state dict
without it (a checkpoint written before minidl kept it) loads, and the counter stays as it is, as
PyTorch's layer loads an old one. Keras's ``BatchNormalization()`` is ``momentum=0.01,
eps=1e-3`` here (docs/batchnorm.md).
"""

from __future__ import annotations

import numbers

import numpy as np

from minidl import functional as F
from minidl.nn.module import Module, Parameter
from minidl.tensor import Tensor


class _BatchNorm(Module):
    dims: tuple[int, ...] = ()  # the input ranks the layer takes
    layout = ""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        dtype=np.float32,
    ):
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"{type(self).__name__}: num_features must be a positive int, got {num_features!r}"
            )
        self.num_features, self.eps = num_features, eps
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones((num_features,), dtype))
            self.bias = Parameter(np.zeros((num_features,), dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", Tensor(np.zeros((num_features,), dtype)))
            self.register_buffer("running_var", Tensor(np.ones((num_features,), dtype)))
            self.register_buffer("num_batches_tracked", Tensor(np.array(0, np.int64)))
        else:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(name, None)
        self.momentum = momentum  # checked (below)

    @property
    def momentum(self) -> float | None:
        return self._momentum

    @momentum.setter
    def momentum(self, value) -> None:
        """Checked on every assignment, not only by the constructor. ``None`` (then or later)
        makes the running statistics a cumulative average over every training batch the layer
        has counted, as PyTorch's."""
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not 0.0 <= value <= 1.0
        ):
            raise ValueError(
                f"{type(self).__name__}: momentum must be in [0, 1] or None (a cumulative "
                f"average), got {value!r}"
            )
        self._momentum = value

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.data[...] = 0
            self.running_var.data[...] = 1
            self.num_batches_tracked.data[...] = 0

    def _complete_state(self, prefix: str, state: dict) -> None:
        """A state dict without ``num_batches_tracked`` (written before minidl kept it for every
        layer) keeps the layer's own counter, as PyTorch's layer does with an old one."""
        key = prefix + "num_batches_tracked"
        if self.track_running_stats and key not in state:
            state[key] = self.num_batches_tracked.numpy().copy()

    def forward(self, x):
        if x.ndim not in self.dims:
            raise ValueError(
                f"{type(self).__name__}: expected {self.layout} input, got shape {x.shape}"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}): input has {x.shape[1]} channels "
                f"(shape {x.shape})"
            )
        # without running statistics, eval normalizes with the batch's own (as PyTorch does)
        training = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum  # unused outside training
        if self.training and self.track_running_stats:
            self.num_batches_tracked.data += 1
            if self.momentum is None:  # a cumulative moving average: every batch weighs the same
                momentum = 1.0 / float(self.num_batches_tracked.data)
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            training=training,
            momentum=momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    """Statistics per feature over N (input (N, C)) or over N and L (input (N, C, L))."""

    dims = (2, 3)
    layout = "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Statistics per channel over N, H and W; input (N, C, H, W)."""

    dims = (4,)
    layout = "(N, C, H, W)"
