"""Data: Fashion-MNIST, image folders, the paper's transforms, and a threaded loader."""

from minidl.data import transforms
from minidl.data.datasets import (
    FASHION_MNIST_CLASSES,
    ArrayDataset,
    ImageFolder,
    fashion_mnist,
    find_fashion_mnist,
    load_fashion_mnist,
    read_idx,
)
from minidl.data.loader import DataLoader

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ArrayDataset",
    "DataLoader",
    "ImageFolder",
    "fashion_mnist",
    "find_fashion_mnist",
    "load_fashion_mnist",
    "read_idx",
    "transforms",
]
