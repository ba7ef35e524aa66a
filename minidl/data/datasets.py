"""Data sets: Fashion-MNIST from its original idx files, an in-memory array set, an image folder.

A data set has ``len(ds)``, ``ds[i] -> (image, label)`` and ``ds.batch(indices, rng) -> (x, y)``,
which the loader calls from background threads; ``rng`` drives the random transforms.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np

FASHION_MNIST_FILES = {
    # file name: SHA-256 of the original .gz (the same bytes Debian's dataset-fashion-mnist ships)
    "train-images-idx3-ubyte.gz": (
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"
    ),
    "train-labels-idx1-ubyte.gz": (
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"
    ),
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")

_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an idx file (gzip or plain): 2 zero bytes, a type code, the number of dimensions,
    one big-endian uint32 per dimension, then the values."""
    path = Path(path)
    compressed = path.suffix == ".gz"
    opener = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except gzip.BadGzipFile as err:
        raise ValueError(f"{path}: cannot read this idx file: not a gzip file ({err})") from None
    except EOFError as err:
        raise ValueError(
            f"{path}: cannot read this idx file: the gzip stream is truncated ({err})"
        ) from None
    except zlib.error as err:
        raise ValueError(
            f"{path}: cannot read this idx file: the gzip data is corrupt ({err})"
        ) from None
    except OSError as err:
        raise ValueError(f"{path}: cannot read this idx file ({err})") from None
    if not data:
        where = "once unzipped" if compressed else "0 bytes"
        raise ValueError(f"{path}: not an idx file (it is empty, {where})")
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: idx header is truncated")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_TYPES[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: idx header says shape {shape} ({expected} bytes) but the file holds "
            f"{len(data) - header} bytes of data"
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(shape)
        .astype(dtype.newbyteorder("="))
    )


def fashion_mnist_folders(root=None) -> list[Path]:
    """Where the loader looks, in order: root, $MINIDL_DATA, Debian's folder, the user cache."""
    folders = []
    if root is not None:
        folders.append(Path(root))
    if os.environ.get("MINIDL_DATA"):
        folders += [
            Path(os.environ["MINIDL_DATA"]),
            Path(os.environ["MINIDL_DATA"]) / "fashion-mnist",
        ]
    folders += [DEBIAN_FOLDER, user_cache() / "fashion-mnist"]
    return folders


def user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minidl"


def find_fashion_mnist(root=None, download: bool = True) -> Path:
    """The first folder holding all four files; downloads into the user cache as a last resort.

    An explicit ``root`` is the only place looked at: a path that does not exist, or lacks one
    of the four files, is an error naming it (never a silent fall-back to another copy)."""
    if root is not None:
        return _explicit_fashion_mnist(Path(root))
    folders = fashion_mnist_folders(root)
    for folder in folders:
        if all((folder / name).is_file() for name in FASHION_MNIST_FILES):
            return folder
    if download:
        target = user_cache() / "fashion-mnist"
        try:
            _download_fashion_mnist(target)
            return target
        except OSError as err:
            reason = f"the download from {FASHION_MNIST_URL} failed ({err})"
    else:
        reason = "downloading was not allowed"
    looked = "\n  ".join(str(f) for f in folders)
    raise FileNotFoundError(
        f"Fashion-MNIST not found; looked in:\n  {looked}\nand {reason}.\n"
        "Get it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or put the four "
        f"files {sorted(FASHION_MNIST_FILES)} in a folder and pass it (or set MINIDL_DATA)."
    )


def _explicit_fashion_mnist(root: Path) -> Path:
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FileNotFoundError(
            f"Fashion-MNIST: {root} {what} (the data folder was given explicitly, so no other "
            "place is searched)"
        )
    missing = [name for name in FASHION_MNIST_FILES if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST: {root} lacks {', '.join(missing)} (it needs all four of "
            f"{', '.join(FASHION_MNIST_FILES)}; the folder was given explicitly, so no other "
            "place is searched). `apt-get install dataset-fashion-mnist` puts them in "
            f"{DEBIAN_FOLDER}; without a folder the loader searches and can download them."
        )
    return root


def _download_fashion_mnist(target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name, sha256 in FASHION_MNIST_FILES.items():
        path = target / name
        if path.is_file() and _sha256(path) == sha256:
            continue
        print(f"minidl: downloading {FASHION_MNIST_URL}{name} to {target}", file=sys.stderr)
        partial = path.with_suffix(".part")
        with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=30) as response:
            with open(partial, "wb") as f:
                shutil.copyfileobj(response, f)
        if _sha256(partial) != sha256:
            partial.unlink()
            raise OSError(f"{name}: SHA-256 does not match the official file")
        partial.replace(path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_fashion_mnist(split: str = "train", root=None, download: bool = True):
    """(images uint8 (N, 28, 28), labels int64 (N,)); "train" has 60,000, "test" 10,000."""
    if split not in ("train", "test"):
        raise ValueError(f"load_fashion_mnist: split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root, download)
    prefix = "train" if split == "train" else "t10k"
    images = read_idx(folder / f"{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(
            f"{folder}: {split} images {images.shape} and labels {labels.shape} disagree"
        )
    return images, labels


class ArrayDataset:
    """Images and labels held in memory. ``transform(x, rng)`` maps a whole batch (B, C, H, W)
    float32 array to another at once (no Python loop over images unless it needs one)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None):
        if len(images) != len(labels):
            raise ValueError(f"ArrayDataset: {len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, np.asarray(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices, rng=None) -> tuple[np.ndarray, np.ndarray]:
        x = self.images[indices]
        if x.ndim == 3:
            x = x[:, None]  # (B, H, W) -> (B, 1, H, W)
        x = x.astype(np.float32)
        if self.transform is not None:
            x = self.transform(x, rng if rng is not None else np.random.default_rng())
        return x, self.labels[indices]

    def __getitem__(self, index):
        x, y = self.batch(np.array([index]))
        return x[0], y[0]


def fashion_mnist(
    split: str = "train", root=None, transform=None, download: bool = True
) -> ArrayDataset:
    """Fashion-MNIST as an ArrayDataset of (1, 28, 28) float32 images scaled to [0, 1];
    ``transform(x, rng)`` then sees each scaled batch."""
    images, labels = load_fashion_mnist(split, root, download)

    def scale(x, rng):
        x = x / np.float32(255.0)
        return transform(x, rng) if transform is not None else x

    return ArrayDataset(images, labels, scale)


# torchvision's IMG_EXTENSIONS: the files an image folder takes (Pillow reads them all); other
# files (notes.txt, .DS_Store, a .gif) are left out as torchvision leaves them out.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class ImageFolder:
    """root/<class>/**/<image>; classes are the sorted sub-folder names (torchvision's rules).

    As in torchvision: files are found in each class folder and its sub-folders (sorted), by
    extension (``IMAGE_EXTENSIONS``, case-insensitive), and a class folder with no image is an
    error naming it. Beyond torchvision (which makes ``.ipynb_checkpoints`` a class, its issue
    2831): hidden entries (names starting with ".", such as ``.ipynb_checkpoints`` or
    ``.DS_Store``) are skipped everywhere, so they never become a class nor shift the labels.
    Folder symlinks are followed, but never into a folder already walked (the root, a class
    folder, an ancestor: a symlink loop), so no image is counted twice. ``ds[i]`` returns
    (transform(image), label) where image is an (H, W, 3) uint8 RGB array; an image Pillow cannot
    read (corrupt, or a decompression bomb) is a ValueError naming the file.
    """

    def __init__(self, root, transform=None, classes: list[str] | None = None):
        """``classes``: another set's class list (``ImageFolder(val, classes=train.classes)``),
        so both number the classes alike; a class folder not in it is refused by name, a class
        with no folder here has no sample."""
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: {self.root} is not a folder")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not _hidden(p.name))
        if not found:
            raise FileNotFoundError(f"ImageFolder: {self.root} has no class sub-folders")
        self.classes = found if classes is None else list(classes)
        unknown = [name for name in found if name not in self.classes]
        if unknown:
            raise ValueError(
                f"ImageFolder: class folder(s) {', '.join(unknown)} under {self.root} are not "
                f"among the given classes {self.classes}"
            )
        self.class_to_idx = {name: label for label, name in enumerate(self.classes)}
        # real paths of the root and every class folder: a class's walk enters none of them
        walled = {os.path.realpath(self.root / name) for name in found}
        walled.add(os.path.realpath(self.root))
        self.samples = [
            (path, self.class_to_idx[name])
            for name in found
            for path in _images_under(self.root / name, walled)
        ]
        empty = sorted(set(found) - {self.classes[label] for _, label in self.samples})
        if empty:
            raise FileNotFoundError(
                f"ImageFolder: no image in the class folder(s) {', '.join(empty)} under "
                f"{self.root} (images are files ending in {', '.join(IMAGE_EXTENSIONS)}); "
                "remove the folder or put images in it"
            )
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.samples[index][0]
        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as err:
            raise ValueError(f"ImageFolder: cannot read image {path}: {err}") from None

    def __getitem__(self, index: int, rng=None):
        image = self.load(index)
        if self.transform is not None:
            image = self.transform(image, rng if rng is not None else np.random.default_rng())
        return image, self.samples[index][1]

    def batch(self, indices, rng=None) -> tuple[np.ndarray, np.ndarray]:
        rng = rng if rng is not None else np.random.default_rng()
        items = [self.__getitem__(int(i), rng) for i in indices]
        return np.stack([x for x, _ in items]), np.array([y for _, y in items], dtype=np.int64)


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _images_under(folder: Path, walled: set[str]) -> list[Path]:
    """Image files in ``folder`` and its sub-folders, sorted as torchvision walks them (each
    folder's files by name, then its sub-folders by name), hidden entries left out. Symlinked
    folders are followed unless their real path is in ``walled`` or already walked (a loop)."""
    seen = set(walled)
    walked = []
    for top, folders, files in os.walk(folder, followlinks=True):
        kept = []
        for name in folders:
            real = os.path.realpath(os.path.join(top, name))
            if not _hidden(name) and real not in seen:
                seen.add(real)
                kept.append(name)
        folders[:] = kept  # os.walk enters only these
        walked.append((top, files))
    return [
        Path(top) / name
        for top, files in sorted(walked)
        for name in sorted(files)
        if not _hidden(name) and name.lower().endswith(IMAGE_EXTENSIONS)
    ]
