"""Data: Fashion-MNIST, Oxford Flowers-17, image folders, the paper's transforms, a threaded
loader."""

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
from minidl.data.flowers import (
    FLOWERS17_CLASSES,
    find_flowers17,
    keras_validation_split,
    load_flowers17,
)
from minidl.data.loader import DataLoader

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FLOWERS17_CLASSES",
    "ArrayDataset",
    "DataLoader",
    "ImageFolder",
    "fashion_mnist",
    "find_fashion_mnist",
    "find_flowers17",
    "keras_validation_split",
    "load_fashion_mnist",
    "load_flowers17",
    "read_idx",
    "transforms",
]
