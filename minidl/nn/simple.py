"""Small layers and losses people write in their first models, each a Module around one Tensor
method or functional op: ``Sigmoid``, ``Tanh``, ``Softmax(dim)``, ``LogSoftmax(dim)``,
``Identity``, ``CrossEntropyLoss`` (``F.cross_entropy``, minidl/ops/loss.py) and ``MSELoss``
(``F.mse_loss``), with PyTorch's names and defaults."""

from __future__ import annotations

from minidl import functional as F
from minidl.nn.module import Module
from minidl.tensor import Tensor


class Sigmoid(Module):
    def forward(self, x):
        return x.sigmoid()


class Tanh(Module):
    def forward(self, x):
        return x.tanh()


class Softmax(Module):
    """softmax along ``dim``, which is required: PyTorch guesses one when it is not given (with a
    deprecation warning); minidl asks for it."""

    normalize = "softmax"  # the Tensor method; LogSoftmax is this layer with log_softmax

    def __init__(self, dim: int | None = None):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        if self.dim is None:
            layer = type(self).__name__
            raise TypeError(f"nn.{layer}: give the dim to normalize over, e.g. nn.{layer}(dim=1)")
        return getattr(x, self.normalize)(self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class LogSoftmax(Softmax):
    normalize = "log_softmax"


class Identity(Module):
    """Its input, unchanged (a placeholder where a layer is switched off); takes and ignores
    any arguments, as PyTorch's does."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, x):
        return x


class CrossEntropyLoss(Module):
    """``F.cross_entropy(logits, target, ...)`` with the options kept on the Module."""

    def __init__(
        self,
        weight=None,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        if weight is None or isinstance(weight, Tensor):
            self.register_buffer("weight", weight)  # moves with .to(device), as PyTorch's
        else:
            self.weight = weight  # a list or array, as F.cross_entropy takes it
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input, target):  # noqa: A002 - PyTorch's argument name
        return F.cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class MSELoss(Module):
    """``F.mse_loss(input, target, reduction)``: the mean (or sum, or each) squared error."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, input, target):  # noqa: A002 - PyTorch's argument name
        return F.mse_loss(input, target, reduction=self.reduction)
