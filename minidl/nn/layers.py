"""Layers: thin Modules around minidl.functional, with PyTorch's constructor arguments."""

from __future__ import annotations

import numpy as np

from minidl import functional as F
from minidl.nn import init
from minidl.nn.module import Module, Parameter
from minidl.ops._checks import pair
from minidl.ops.lrn import check_size


def _check_sizes(layer: str, **sizes) -> None:
    """Each size a positive int, checked at construction (a 0 would fail later, far away)."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")


class Conv2d(Module):
    """weight: (out_channels, in_channels // groups, kh, kw), bias: (out_channels,)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        dtype=np.float32,
    ):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(
                f"Conv2d: padding_mode={padding_mode!r} is not supported; minidl pads with zeros "
                f"only (padding_mode='zeros')"
            )
        _check_sizes("Conv2d", in_channels=in_channels, out_channels=out_channels, groups=groups)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"Conv2d: in_channels {in_channels} and out_channels {out_channels} must both be "
                f"divisible by groups={groups}"
            )
        kh, kw = pair("Conv2d", "kernel_size", kernel_size, minimum=1)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding, self.groups = (kh, kw), stride, padding, groups
        self.dilation, self.padding_mode = dilation, padding_mode
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(np.zeros((out_channels, in_channels // groups, kh, kw), dtype))
        init.default_uniform_(self.weight, fan_in)
        if bias:
            self.bias = Parameter(np.zeros((out_channels,), dtype))
            init.default_uniform_(self.bias, fan_in)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.conv2d(
            x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"groups={self.groups}"
        )


class Linear(Module):
    """weight: (out_features, in_features), bias: (out_features,)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, dtype=np.float32):
        super().__init__()
        _check_sizes("Linear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(np.zeros((out_features, in_features), dtype))
        init.default_uniform_(self.weight, in_features)
        if bias:
            self.bias = Parameter(np.zeros((out_features,), dtype))
            init.default_uniform_(self.bias, in_features)
        else:
            self.register_parameter("bias", None)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class MaxPool2d(Module):
    def __init__(
        self,
        kernel_size,
        stride=None,
        padding=0,
        dilation=1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.return_indices, self.ceil_mode = dilation, return_indices, ceil_mode

    def forward(self, x):
        return F.max_pool2d(
            x,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.ceil_mode,
            self.return_indices,
        )

    def extra_repr(self) -> str:
        return (
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, ceil_mode={self.ceil_mode}"
        )


class LocalResponseNorm(Module):
    """The paper's LRN; alpha is NOT divided by size (see minidl/ops/lrn.py)."""

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        check_size("LocalResponseNorm", size)  # at construction, not at the first call
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class Dropout(Module):
    """Inverted dropout while training, identity in eval mode.

    ``first``: where this process's batch starts in the global batch, in samples (0, the default,
    in one process). In data-parallel training the loop sets it before each forward pass to the
    batch's ``Batch.first`` with ``Dropout.place(model, first)``, and the layer passes it on to
    ``F.dropout``, so the ranks draw the masks one process draws (docs/distributed.md)."""

    def __init__(self, p: float = 0.5, inplace: bool = False):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"Dropout: p must be a probability in [0, 1], got {p!r}")
        self.p, self.inplace = p, inplace
        self.first = 0

    def forward(self, x):
        return F.dropout(x, self.p, self.training, self.inplace, first=self.first)

    @staticmethod
    def place(model: Module, first: int) -> None:
        """Tell every Dropout layer in ``model`` that the next batch starts at sample ``first``
        of the global batch."""
        for layer in model.modules():
            if isinstance(layer, Dropout):
                layer.first = first

    def extra_repr(self) -> str:
        return f"p={self.p}, inplace={self.inplace}"


class ReLU(Module):
    """max(x, 0); ``inplace=True`` (torchvision's models write it) writes into x, as PyTorch's."""

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return F.relu(x, self.inplace)

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


class Flatten(Module):
    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return x.flatten(self.start_dim, self.end_dim)
