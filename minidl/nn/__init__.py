"""Layers and models: ``Module`` and the layers AlexNet is made of."""

from minidl.nn import functional, init
from minidl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from minidl.nn.layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU
from minidl.nn.module import Module, Parameter, Sequential

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "Dropout",
    "Flatten",
    "Linear",
    "LocalResponseNorm",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "functional",
    "init",
]
