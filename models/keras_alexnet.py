"""The Keras "AlexNet with BatchNorm" that AlexNet write-ups train on Oxford Flowers-17.

Built layer for layer as the write-up's Keras ``Sequential`` (224x224x3 input, "valid" padding,
no groups, no LRN; BatchNormalization after each block):

    block  Keras layers                                        output (C, H, W)
    1      Conv2D 96, 11x11, stride 4 -> ReLU -> MaxPool 2x2/2 -> BN     96 x 27 x 27
    2      Conv2D 256, 11x11         -> ReLU -> MaxPool 2x2/2 -> BN     256 x 8 x 8
    3      Conv2D 384, 3x3           -> ReLU -> BN                      384 x 6 x 6
    4      Conv2D 384, 3x3           -> ReLU -> BN                      384 x 4 x 4
    5      Conv2D 256, 3x3           -> ReLU -> MaxPool 2x2/2 -> BN     256 x 1 x 1
    6      Flatten -> Dense 4096 -> ReLU -> Dropout 0.4 -> BN           4096
    7      Dense 4096 -> ReLU -> Dropout 0.4 -> BN                      4096
    8      Dense 1000 -> ReLU -> Dropout 0.4 -> BN                      1000
    9      Dense 17 -> softmax                                         17

Differences that change no number: the layout is NCHW (Keras: NHWC; Flatten sees a 1x1 map, so
the order of the 256 features is the same); the last layer returns logits and the softmax sits in
``F.cross_entropy`` (log-softmax, the stable form of Keras's softmax + categorical cross-entropy).
Keras's defaults are kept: Glorot-uniform kernels, zero biases, BatchNormalization(momentum=0.99,
epsilon=1e-3), which in PyTorch's convention is ``momentum=0.01, eps=1e-3`` (docs/batchnorm.md).

Parameters as Keras counts them: 28,096,769 in all, 28,075,633 trainable; the 21,136
non-trainable are the BN layers' moving means and variances (Keras counts four numbers per BN
channel, gamma and beta trainable). ``summary()`` prints both counts.
"""

from __future__ import annotations

from minidl import nn
from minidl.nn import init as mdl_init
from minidl.nn.module import format_summary

KERAS_BN_MOMENTUM = 0.01  # Keras's momentum=0.99, as PyTorch writes it: 1 - 0.99
KERAS_BN_EPS = 1e-3


def batch_norm_2d(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def batch_norm_1d(features: int) -> nn.BatchNorm1d:
    return nn.BatchNorm1d(features, eps=KERAS_BN_EPS, momentum=KERAS_BN_MOMENTUM)


def _moving_statistics(module: nn.Module) -> int:
    """The numbers Keras counts as non-trainable: BN's moving mean and variance (its floating
    buffers; PyTorch's batch counter, an int, is not a weight)."""
    return sum(b.numel() for b in module.buffers() if b.dtype.kind == "f")


class KerasAlexNet(nn.Module):
    def __init__(self, num_classes: int = 17, in_channels: int = 3, dropout: float = 0.4):
        super().__init__()
        self.features = nn.Sequential(
            conv1=nn.Conv2d(in_channels, 96, 11, stride=4),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2, 2),
            norm1=batch_norm_2d(96),
            conv2=nn.Conv2d(96, 256, 11),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2, 2),
            norm2=batch_norm_2d(256),
            conv3=nn.Conv2d(256, 384, 3),
            relu3=nn.ReLU(),
            norm3=batch_norm_2d(384),
            conv4=nn.Conv2d(384, 384, 3),
            relu4=nn.ReLU(),
            norm4=batch_norm_2d(384),
            conv5=nn.Conv2d(384, 256, 3),
            relu5=nn.ReLU(),
            pool5=nn.MaxPool2d(2, 2),
            norm5=batch_norm_2d(256),
        )
        self.classifier = nn.Sequential(
            flatten=nn.Flatten(),
            fc6=nn.Linear(256, 4096),
            relu6=nn.ReLU(),
            drop6=nn.Dropout(dropout),
            norm6=batch_norm_1d(4096),
            fc7=nn.Linear(4096, 4096),
            relu7=nn.ReLU(),
            drop7=nn.Dropout(dropout),
            norm7=batch_norm_1d(4096),
            fc8=nn.Linear(4096, 1000),
            relu8=nn.ReLU(),
            drop8=nn.Dropout(dropout),
            norm8=batch_norm_1d(1000),
            fc9=nn.Linear(1000, num_classes),
        )
        for layer in self.modules():  # Keras's defaults: glorot_uniform kernels, zero biases
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                mdl_init.xavier_uniform_(layer.weight)
                mdl_init.zeros_(layer.bias)

    def forward(self, x):
        # x: (N, 3, 224, 224) -> logits (N, num_classes)
        return self.classifier(self.features(x))

    def keras_counts(self) -> tuple[int, int]:
        """(total, trainable) as Keras counts them: parameters plus BN's moving statistics."""
        trainable = self.num_parameters()
        return trainable + _moving_statistics(self), trainable

    def summary(self, input_shape=(3, 224, 224), batch_size: int = 1, show: bool = True):
        """Each layer's output shape with its parameter count as Keras gives it (BN: four numbers
        per channel) and the trainable part; then Keras's three totals. Returns the rows
        (name, type, shape, Keras count, trainable count)."""
        base = super().summary(input_shape, batch_size, show=False)
        modules = dict(self.named_modules())
        rows = []
        for name, kind, shape, trainable in base:
            frozen = _moving_statistics(modules[name])
            rows.append((name, kind, shape, trainable + frozen, trainable))
        total, trainable = self.keras_counts()
        if show:
            table = format_summary([r[:4] for r in rows], total, input_shape)
            print(table.replace("total parameters", "total parameters (as Keras counts them)"))
            print(f"trainable parameters: {trainable:,}")
            print(f"non-trainable parameters: {total - trainable:,} (BN moving mean and variance)")
        return rows
