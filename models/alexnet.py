"""AlexNet as Krizhevsky, Sutskever and Hinton (2012) describe it, and a small twin for 28x28.

    layer  paper (227x227x3 input)                      output
    conv1  96 x 11x11, stride 4      ReLU, LRN, pool    96 x 55 x 55 -> 27
    conv2  256 x 5x5, pad 2, 2 groups ReLU, LRN, pool   256 x 27 x 27 -> 13
    conv3  384 x 3x3, pad 1           ReLU              384 x 13 x 13
    conv4  384 x 3x3, pad 1, 2 groups ReLU              384 x 13 x 13
    conv5  256 x 3x3, pad 1, 2 groups ReLU, pool        256 x 13 x 13 -> 6
    fc6    4096  (dropout 0.5 before)  ReLU
    fc7    4096  (dropout 0.5 before)  ReLU
    fc8    num_classes                  (softmax cross-entropy in the loss)

LRN: n=5, k=2, alpha=1e-4, beta=0.75 (section 3.3); pooling 3x3 stride 2, overlapping (3.4);
groups=2 are the two GPU towers (3.2). 60,965,224 parameters with groups, 62,378,344 without.
Both nets are one builder (``features`` and ``classifier``) over a table of conv specs:
``PAPER_CONVS`` and ``SMALL_CONVS``.
"""

from __future__ import annotations

from dataclasses import dataclass

from minidl import nn
from minidl.nn import init as mdl_init

INITS = ("paper", "caffe", "kaiming")


@dataclass(frozen=True)
class ConvSpec:
    """One of the five conv layers and what follows its ReLU."""

    out_channels: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    grouped: bool = False  # split into ``groups`` towers (the two GPUs of section 3.2)
    norm: bool = False  # a normalization layer (LRN, or BatchNorm2d) after the ReLU
    pool: bool = False  # then max-pool 3x3, stride 2 (overlapping, section 3.4)


PAPER_CONVS = (
    ConvSpec(96, 11, stride=4, norm=True, pool=True),
    ConvSpec(256, 5, padding=2, grouped=True, norm=True, pool=True),
    ConvSpec(384, 3, padding=1),
    ConvSpec(384, 3, padding=1, grouped=True),
    ConvSpec(256, 3, padding=1, grouped=True, pool=True),
)
SMALL_CONVS = (
    ConvSpec(32, 5, padding=2, norm=True, pool=True),
    ConvSpec(64, 5, padding=2, grouped=True, norm=True, pool=True),
    ConvSpec(96, 3, padding=1),
    ConvSpec(96, 3, padding=1, grouped=True),
    ConvSpec(64, 3, padding=1, grouped=True, pool=True),
)
BIASES_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # the paper's bias-1 layers (section 5)


def lrn() -> nn.LocalResponseNorm:
    """The paper's LRN: n=5, k=2, alpha=1e-4, beta=0.75 (section 3.3)."""
    return nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)


def features(convs, in_channels: int, groups: int, normalization=lambda channels: lrn()):
    """conv1..conv5, each followed by its ReLU, then (where its spec says) ``normalization`` and
    max-pooling; layer names conv1, relu1, norm1, pool1, conv2, ..."""
    layers = {}
    for i, spec in enumerate(convs, start=1):
        layers[f"conv{i}"] = nn.Conv2d(
            in_channels,
            spec.out_channels,
            spec.kernel_size,
            stride=spec.stride,
            padding=spec.padding,
            groups=groups if spec.grouped else 1,
        )
        layers[f"relu{i}"] = nn.ReLU()
        if spec.norm:
            layers[f"norm{i}"] = normalization(spec.out_channels)
        if spec.pool:
            layers[f"pool{i}"] = nn.MaxPool2d(3, 2)
        in_channels = spec.out_channels
    return nn.Sequential(**layers)


def classifier(in_features: int, hidden: int, num_classes: int, dropout: float):
    """fc6 and fc7 (``hidden`` wide, dropout before each, ReLU after), then fc8."""
    return nn.Sequential(
        flatten=nn.Flatten(),
        drop6=nn.Dropout(dropout),
        fc6=nn.Linear(in_features, hidden),
        relu6=nn.ReLU(),
        drop7=nn.Dropout(dropout),
        fc7=nn.Linear(hidden, hidden),
        relu7=nn.ReLU(),
        fc8=nn.Linear(hidden, num_classes),
    )


def feature_side(convs, input_size: int) -> int:
    """Side of the last pooled feature map for a square input of side ``input_size``."""
    side = input_size
    for spec in convs:
        side = (side + 2 * spec.padding - spec.kernel_size) // spec.stride + 1
        if spec.pool:
            side = (side - 3) // 2 + 1
    return side


class AlexNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 1000,
        groups: int = 2,
        in_channels: int = 3,
        input_size: int = 227,
        init: str = "paper",
        dropout: float = 0.5,
    ):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"AlexNet: init must be one of {INITS}, got {init!r}")
        side = feature_size(input_size)
        if side < 1:
            raise ValueError(
                f"AlexNet: input_size {input_size} is too small (needs at least {MIN_INPUT_SIZE})"
            )
        self.features = features(PAPER_CONVS, in_channels, groups)
        width = PAPER_CONVS[-1].out_channels * side * side  # 256 x 6 x 6 at 227
        self.classifier = classifier(width, 4096, num_classes, dropout)
        initialize(self, init, ones=BIASES_ONE)

    def forward(self, x):
        return self.classifier(self.features(x))


def feature_size(input_size: int) -> int:
    """Side of conv5's pooled output: 6 for 227, 5 for 224 (conv2-5 keep the size)."""
    return feature_side(PAPER_CONVS, input_size)


# The smallest input side with an output left after pool5, computed rather than written down:
# pool5 needs 3, so pool2 needs 7 and pool1 15, and conv1 (11x11, stride 4) gives 15 from 67.
MIN_INPUT_SIZE = next(n for n in range(11, 1000) if feature_size(n) >= 1)


class SmallAlexNet(nn.Module):
    """AlexNet's layer kinds at 28x28 (conv, ReLU, LRN, overlapping pool, grouped convs, dropout,
    three fully connected layers), small enough to train on Fashion-MNIST in minutes on a CPU.

        conv1 32 x 5x5 pad 2            -> 28, pool 3/2 -> 13
        conv2 64 x 5x5 pad 2, 2 groups  -> 13, pool 3/2 -> 6
        conv3 96 x 3x3 pad 1, conv4 96 x 3x3 pad 1 (2 groups), conv5 64 x 3x3 pad 1 (2 groups)
                                        -> 6, pool 3/2 -> 2
        fc6 256 -> 512, fc7 512 -> 512, fc8 512 -> classes (dropout before fc6 and fc7)

    ``norm="batch"`` puts BatchNorm2d (PyTorch's defaults) where the LRN layers are, after the
    ReLUs of conv1 and conv2: the same net with the paper's normalization swapped for Ioffe and
    Szegedy's (2015), which replaced LRN in later networks.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        groups: int = 2,
        init: str = "kaiming",
        dropout: float = 0.5,
        norm: str = "lrn",
    ):
        super().__init__()
        if norm not in ("lrn", "batch"):
            raise ValueError(f"SmallAlexNet: norm must be 'lrn' or 'batch', got {norm!r}")
        normalization = nn.BatchNorm2d if norm == "batch" else lambda channels: lrn()
        self.features = features(SMALL_CONVS, in_channels, groups, normalization)
        width = SMALL_CONVS[-1].out_channels * feature_side(SMALL_CONVS, 28) ** 2  # 64 x 2 x 2
        self.classifier = classifier(width, 512, num_classes, dropout)
        initialize(self, init, ones=BIASES_ONE)

    def forward(self, x):
        return self.classifier(self.features(x))


def initialize(model: nn.Module, scheme: str, ones: tuple[str, ...]) -> None:
    """ "paper": weights N(0, 0.01), biases 1 in ``ones`` (conv2, conv4, conv5, fc6, fc7) and 0
    elsewhere (section 5). "caffe" (bvlc_alexnet): biases 0.1 instead of 1, fc6/fc7 weights
    N(0, 0.005); it trains more reliably from scratch. "kaiming": He-normal weights, zero biases."""
    for name, layer in model.named_modules():
        if not isinstance(layer, (nn.Conv2d, nn.Linear)):
            continue
        short = name.rsplit(".", 1)[-1]
        if scheme == "kaiming":
            mdl_init.kaiming_normal_(layer.weight)
            mdl_init.zeros_(layer.bias)
            continue
        std = 0.005 if scheme == "caffe" and short in ("fc6", "fc7") else 0.01
        mdl_init.normal_(layer.weight, 0.0, std)
        bias = (1.0 if scheme == "paper" else 0.1) if short in ones else 0.0
        mdl_init.constant_(layer.bias, bias)
