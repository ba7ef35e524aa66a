"""The functional API (``import minidl.functional as F``), with PyTorch's names and layouts."""

from minidl.ops.activation import bias_relu, relu
from minidl.ops.batchnorm import batch_norm
from minidl.ops.conv import conv2d
from minidl.ops.dropout import dropout
from minidl.ops.linear import linear
from minidl.ops.loss import cross_entropy
from minidl.ops.lrn import local_response_norm
from minidl.ops.pool import max_pool2d
from minidl.ops.softmax import log_softmax, softmax


def flatten(x, start_dim: int = 1, end_dim: int = -1):
    """Merge dimensions start_dim..end_dim: (N, C, H, W) -> (N, C*H*W) by default."""
    return x.flatten(start_dim, end_dim)


def mse_loss(input, target, reduction: str = "mean"):  # noqa: A002 - PyTorch's name
    """(input - target)^2, averaged ("mean"), summed ("sum") or per element ("none"); target
    broadcasts, as in PyTorch (which warns when the shapes differ). Tensor ops: autograd
    derives the backward, 2 (input - target) / N."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"mse_loss: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    error = input - target
    squares = error * error
    return squares if reduction == "none" else getattr(squares, reduction)()


__all__ = [
    "batch_norm",
    "bias_relu",
    "conv2d",
    "cross_entropy",
    "dropout",
    "flatten",
    "linear",
    "local_response_norm",
    "log_softmax",
    "max_pool2d",
    "mse_loss",
    "relu",
    "softmax",
]
