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
    "relu",
    "softmax",
]
