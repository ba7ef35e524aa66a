"""Image transforms for the paper's pipeline (section 4.1) and for ten-crop testing.

Every transform is called as ``t(image, rng)`` on an (H, W, C) array (uint8 or float) and
returns an array; ``rng`` is a NumPy Generator the loader derives from (seed, epoch, batch), so
random crops, flips and colour noise are reproducible even with background threads.

Training, as in the paper: resize the shorter side to 256, centre-crop 256x256, subtract the mean
RGB, take a random 227x227 crop and a random horizontal flip, add PCA colour noise. Testing:
the centre crop, or the mean of the softmax over ten crops (``TenCrop``).
"""

from __future__ import annotations

import functools

import numpy as np

from minidl import dtypes


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, rng=None):
        for t in self.transforms:
            image = t(image, rng)
        return image


def resize(image, width: int, height: int):
    """Bilinear resize through Pillow of an (H, W, C) array: uint8 RGB as it is, and one channel
    (uint8 or float) as a 2-D image. Returns (height, width, C)."""
    from PIL import Image

    channels = image.shape[2:]
    if image.dtype == np.uint8 and channels == (3,):
        pil = Image.fromarray(image)
    elif channels in ((), (1,)):
        plane = image.reshape(image.shape[:2])
        pil = Image.fromarray(plane if plane.dtype == np.uint8 else plane.astype(np.float32))
    else:
        raise ValueError(
            f"resize: expected uint8 RGB or one channel, got {image.shape} {image.dtype}"
        )
    return np.asarray(pil.resize((width, height), Image.BILINEAR)).reshape(height, width, *channels)


@functools.lru_cache(maxsize=64)
def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) matrix of Pillow's bilinear resize along one axis.

    Resizing is linear, and bilinear resizing is separable, so an image resizes as
    ``R_h @ image @ R_w.T``. Output pixel ``o`` is centred at ``(o + 0.5) * scale`` in input
    coordinates (scale = in / out); its weights are the triangle filter ``1 - |d|`` over the input
    pixel centres, widened by the scale when shrinking (so every input pixel counts: antialiasing),
    and normalized to sum to 1. This is Pillow's ``precompute_coeffs``, so the result matches
    ``Image.resize(..., BILINEAR)`` on float images.
    """
    scale = in_size / out_size
    width = max(scale, 1.0)  # the filter's half-width in input pixels
    weights = np.zeros((out_size, in_size))
    for o in range(out_size):
        centre = (o + 0.5) * scale
        first = max(int(centre - width + 0.5), 0)
        last = min(int(centre + width + 0.5), in_size)
        d = (np.arange(first, last) + 0.5 - centre) / width
        w = np.clip(1.0 - np.abs(d), 0.0, None)
        weights[o, first:last] = w / w.sum()
    weights.flags.writeable = False  # cached and shared between calls
    return weights


def resize_batch(images, height: int, width: int):
    """Bilinear resize of a (..., H, W) batch, e.g. (B, C, H, W), as two matrix products:
    the same as resizing each image with Pillow (``resize``), and about six times faster
    (Fashion-MNIST's 28x28 to 224x224 for 128 images: 5 ms instead of 32). Float stays its
    dtype; integer images come back as float32."""
    images = np.asarray(images)
    if images.ndim < 2:
        raise ValueError(f"resize_batch: expected (..., H, W) images, got shape {images.shape}")
    if dtypes.kind(images.dtype) != "f":  # integer pixels: resize in float32 (no rounding back)
        images = images.astype(np.float32)
    h, w = images.shape[-2:]
    rows = bilinear_matrix(h, height).astype(images.dtype)
    cols = bilinear_matrix(w, width).astype(images.dtype)
    # rows @ image @ cols.T for every image; einsum picks the order of the products and turns
    # them into a few large GEMMs (about 4x faster than broadcasting matmul over the batch)
    flat = images.reshape(-1, h, w)
    out = np.einsum("ph,bhw,qw->bpq", rows, flat, cols, optimize=True)
    return out.reshape(*images.shape[:-2], height, width)


class ResizeShorter:
    """Scale so the shorter side is ``size`` (bilinear, through Pillow)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, rng=None):
        h, w = image.shape[:2]
        scale = self.size / min(h, w)
        width, height = max(self.size, round(w * scale)), max(self.size, round(h * scale))
        return image if (width, height) == (w, h) else resize(image, width, height)


class Resize:
    """Scale to exactly (size, size) (bilinear), e.g. Fashion-MNIST's 28x28 to 224x224."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, rng=None):
        if image.shape[:2] == (self.size, self.size):
            return image
        return resize(image, self.size, self.size)


def crop(image, top: int, left: int, size: int):
    return image[top : top + size, left : left + size]


class CenterCrop:
    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, rng=None):
        h, w = image.shape[:2]
        _check_fits(image, self.size)
        return crop(image, (h - self.size) // 2, (w - self.size) // 2, self.size)


class RandomCrop:
    """A size x size crop at a uniformly random position (the paper's 227 patches of 256)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, rng):
        h, w = image.shape[:2]
        _check_fits(image, self.size)
        return crop(
            image,
            int(rng.integers(0, h - self.size + 1)),
            int(rng.integers(0, w - self.size + 1)),
            self.size,
        )


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, rng):
        return image[:, ::-1] if rng.random() < self.p else image


class SubtractMean:
    """image - mean RGB, as float32 (the paper subtracts the training set's mean activity)."""

    def __init__(self, mean):
        self.mean = np.asarray(mean, dtype=np.float32)

    def __call__(self, image, rng=None):
        return image.astype(np.float32) - self.mean


class PCAColorNoise:
    """Add [p1 p2 p3] [a1 l1, a2 l2, a3 l3]^T to every pixel, a_i ~ N(0, std) drawn once per
    image, p_i and l_i the eigenvectors and eigenvalues of the training set's RGB covariance
    (section 4.1: "altering the intensities of the RGB channels")."""

    def __init__(self, eigenvalues, eigenvectors, std: float = 0.1):
        self.eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        self.eigenvectors = np.asarray(eigenvectors, dtype=np.float64)  # columns are p_i
        self.std = std

    def shift(self, rng) -> np.ndarray:
        alpha = rng.normal(0.0, self.std, size=3)
        return self.eigenvectors @ (alpha * self.eigenvalues)

    def __call__(self, image, rng):
        return (image.astype(np.float32) + self.shift(rng).astype(np.float32)).astype(np.float32)


class ToCHW:
    """(H, W, C) -> (C, H, W) float32, contiguous (what the network takes)."""

    def __call__(self, image, rng=None):
        image = np.asarray(image, dtype=np.float32)
        if image.ndim == 2:
            image = image[:, :, None]
        return np.ascontiguousarray(image.transpose(2, 0, 1))


class TenCrop:
    """The four corner crops, the centre crop, and their horizontal mirrors: (10, size, size, C)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image, rng=None):
        h, w = image.shape[:2]
        s = self.size
        _check_fits(image, s)
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        crops = [crop(image, top, left, s) for top, left in corners]
        return np.stack(crops + [c[:, ::-1] for c in crops])


def _check_fits(image, size: int) -> None:
    h, w = image.shape[:2]
    if size > h or size > w:
        raise ValueError(f"crop size {size} is larger than the image {h}x{w}")


def rgb_statistics(images) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean RGB, and eigenvalues / eigenvectors (columns) of the RGB covariance over all pixels
    of an iterable of (H, W, 3) images; eigenvalues in decreasing order."""
    count, total, outer = 0, np.zeros(3), np.zeros((3, 3))
    for image in images:
        pixels = np.asarray(image, dtype=np.float64).reshape(-1, 3)
        count += len(pixels)
        total += pixels.sum(axis=0)
        outer += pixels.T @ pixels
    if count == 0:
        raise ValueError("rgb_statistics: no pixels")
    mean = total / count
    covariance = outer / count - np.outer(mean, mean)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1]
    return mean, eigenvalues[order], eigenvectors[:, order]
