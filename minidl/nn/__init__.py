"""Layers and models: ``Module`` and the layers AlexNet is made of."""

from minidl.nn import functional, init
from minidl.nn.batchnorm import BatchNorm1d, BatchNorm2d
from minidl.nn.layers import Conv2d, Dropout, Flatten, Linear, LocalResponseNorm, MaxPool2d, ReLU
from minidl.nn.module import Module, Parameter, Sequential
from minidl.nn.simple import CrossEntropyLoss, Identity, LogSoftmax, MSELoss, Sigmoid, Softmax, Tanh

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "Linear",
    "LocalResponseNorm",
    "LogSoftmax",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "Parameter",
    "ReLU",
    "Sequential",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "functional",
    "init",
]
