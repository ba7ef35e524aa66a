"""Oxford Flowers-17 (Nilsback & Zisserman 2006) as its authors publish it.

``17flowers.tgz`` holds ``jpg/image_0001.jpg`` ... ``jpg/image_1360.jpg`` (and ``jpg/files.txt``,
which is ignored): 17 classes of 80 consecutive images, so image i has label (i - 1) // 80. The
loader reads the archive directly (no extraction) or its extracted ``jpg/`` folder, and checks the
layout: every image_NNNN.jpg from 0001 to the expected count present exactly once and readable,
none beyond it; a problem raises an error that names the file.

Images are resized as the write-up's loader does (tflearn's ``oxflower17.load_data``): each
photo straight to 224x224, aspect ratio not kept, with Pillow's antialiasing (Lanczos) filter,
then scaled to [0, 1]. They are kept as uint8 (N, 3, 224, 224) (205 MB for all 1,360) and scaled
per batch, which gives the same float32 values as scaling them all at once. tflearn also shuffles
the arrays once when it loads them (``shuffle=True``); Keras's ``validation_split=0.2`` then takes
the LAST 20% of those shuffled arrays (``keras_validation_split``), so the load-time shuffle is
what puts every class in both parts. Here it is seeded.

The download (only with ``download=True``, never in tests) goes to the user cache and must match
``FLOWERS17_SHA256``. The Oxford page publishes no checksum; the SHA-256 is the one Intel's dffml
pins for this URL (examples/flower17/dataset.sh), and the MD5 ``FLOWERS17_MD5`` is the one that
several independent loaders pin (a torchvision-style Flowers17 class, DeepMind's dataset
registry); a download must match both.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import shutil
import sys
import tarfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from minidl.data.datasets import ArrayDataset, user_cache

FLOWERS17_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/17/17flowers.tgz"
FLOWERS17_SHA256 = "fe38a60f8b4a95e657551247d3e7d799a3fafcdbc595be504b12839967823d70"
FLOWERS17_MD5 = "b59a65d8d1a99cd66944d474e1289eab"
FLOWERS17_COUNT = 1360
PER_CLASS = 80
# The Oxford page's order, which public loaders use for labels 0..16; the archive itself holds no
# names, only the numbering.
FLOWERS17_CLASSES = (
    "Daffodil",
    "Snowdrop",
    "Lily Valley",
    "Bluebell",
    "Crocus",
    "Iris",
    "Tigerlily",
    "Tulip",
    "Fritillary",
    "Sunflower",
    "Daisy",
    "Colts' Foot",
    "Dandelion",
    "Cowslip",
    "Buttercup",
    "Windflower",
    "Pansy",
)
IMAGE_NAME = re.compile(r"image_(\d+)\.jpg")


def flowers17_label(index: int) -> int:
    """The class of image_<index>.jpg (1-based): 80 consecutive images per class."""
    return (index - 1) // PER_CLASS


# ---- where the data is ---------------------------------------------------------------------------
def flowers17_candidates(root=None) -> list[Path]:
    """Where the loader looks, in order: root (an archive, a jpg/ folder, or a folder holding
    either), $MINIDL_DATA, and the user cache."""
    folders = [Path(root)] if root is not None else []
    if os.environ.get("MINIDL_DATA"):
        data = Path(os.environ["MINIDL_DATA"])
        folders += [data, data / "17flowers"]
    folders.append(user_cache() / "17flowers")
    return folders


def _source_in(path: Path) -> Path | None:
    """The archive or jpg/ folder that ``path`` is or holds."""
    if path.is_file():
        return path
    for candidate in (path / "17flowers.tgz", path / "jpg"):
        if candidate.exists():
            return candidate
    if path.is_dir() and any(IMAGE_NAME.fullmatch(p.name) for p in path.iterdir()):
        return path  # the jpg/ folder itself, under another name
    return None


def find_flowers17(root=None, download: bool = False) -> Path:
    """The archive or jpg/ folder to read; with ``download=True`` fetches the archive into the
    user cache as a last resort."""
    candidates = flowers17_candidates(root)
    if root is not None and not Path(root).exists():
        raise FileNotFoundError(f"flowers17: {root} does not exist")
    for place in candidates:
        source = _source_in(place) if place.exists() else None
        if source is not None:
            return source
    if download:
        return download_flowers17(user_cache() / "17flowers")
    looked = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"flowers17: 17flowers.tgz or its jpg/ folder not found; looked in:\n  {looked}\n"
        f"Download {FLOWERS17_URL} (SHA-256 {FLOWERS17_SHA256}) and pass its path, set "
        "MINIDL_DATA, or allow download=True (--download)."
    )


def download_flowers17(target: Path) -> Path:
    """Fetch the archive into ``target``; it must match the pinned SHA-256 and MD5."""
    target.mkdir(parents=True, exist_ok=True)
    path = target / "17flowers.tgz"
    if path.is_file() and _digests(path) == (FLOWERS17_SHA256, FLOWERS17_MD5):
        return path
    print(f"minidl: downloading {FLOWERS17_URL} (58 MB) to {target}", file=sys.stderr)
    partial = path.with_suffix(".part")
    with urllib.request.urlopen(FLOWERS17_URL, timeout=60) as response:
        with open(partial, "wb") as f:
            shutil.copyfileobj(response, f)
    sha256, md5 = _digests(partial)
    if (sha256, md5) != (FLOWERS17_SHA256, FLOWERS17_MD5):
        partial.unlink()
        raise OSError(
            f"flowers17: the download from {FLOWERS17_URL} has SHA-256 {sha256} and MD5 {md5}, "
            f"expected {FLOWERS17_SHA256} and {FLOWERS17_MD5}; nothing was kept"
        )
    partial.replace(path)
    return path


def _digests(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


# ---- reading -------------------------------------------------------------------------------------
def _decompressed(path: Path) -> bytes:
    """The archive's bytes, a gzip stream read to its end: its trailer's CRC-32 and length are
    checked (tarfile stops at the tar's end blocks, before the trailer, and never checks them)."""
    content = path.read_bytes()
    if content[:2] != b"\x1f\x8b":  # not gzip: a plain tar, or bzip2/xz (checked by tarfile)
        return content
    try:
        return gzip.decompress(content)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"flowers17: {path} is truncated or corrupt ({err})") from None


def _archive_members(path: Path) -> dict[int, tuple[str, object]]:
    """image index -> (name for errors, a function returning the file's bytes), from the archive
    or folder; names that are not image_NNNN.jpg (files.txt) are skipped."""
    found: dict[int, tuple[str, object]] = {}

    def add(index: int, name: str, read) -> None:
        if index in found:
            raise ValueError(f"flowers17: {name} appears twice in {path} ({found[index][0]})")
        found[index] = (name, read)

    if path.is_dir():
        for file in sorted(path.iterdir()):
            match = IMAGE_NAME.fullmatch(file.name)
            if match and file.is_file():
                add(int(match.group(1)), str(file), file.read_bytes)
        return found
    try:
        archive = tarfile.open(fileobj=io.BytesIO(_decompressed(path)), mode="r:*")
    except (tarfile.TarError, OSError) as err:
        raise ValueError(f"flowers17: {path} is not a readable tar archive ({err})") from None
    with archive:
        try:
            members = archive.getmembers()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise ValueError(f"flowers17: {path} is truncated or corrupt ({err})") from None
        for member in members:
            match = IMAGE_NAME.fullmatch(Path(member.name).name)
            if match and member.isfile():
                try:
                    data = archive.extractfile(member).read()
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise ValueError(
                        f"flowers17: {path}:{member.name} cannot be read ({err})"
                    ) from None
                add(int(match.group(1)), f"{path}:{member.name}", lambda data=data: data)
    return found


def decode_and_resize(data: bytes, name: str, size: int) -> np.ndarray:
    """JPEG bytes -> (3, size, size) uint8: RGB, resized with Pillow's Lanczos (antialias) filter,
    as tflearn's resize_image does."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    except Exception as err:  # Pillow raises several types for a broken file
        raise ValueError(f"flowers17: {name} is not a readable image ({err})") from None
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def load_flowers17(
    root=None,
    size: int = 224,
    count: int = FLOWERS17_COUNT,
    shuffle: bool = True,
    seed: int = 0,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (count, 3, size, size), labels int64 (count,)).

    ``count`` is how many images the layout must hold (1,360; tests make smaller archives).
    ``shuffle`` applies one seeded permutation, as tflearn's loader shuffles once (the order
    Keras's validation_split then cuts); ``shuffle=False`` keeps the file order."""
    if count < 1:
        raise ValueError(f"load_flowers17: count must be >= 1, got {count}")
    source = find_flowers17(root, download)
    members = _archive_members(source)
    width = max(4, len(str(count)))
    for index in range(1, count + 1):
        if index not in members:
            raise FileNotFoundError(
                f"flowers17: image_{index:0{width}d}.jpg is missing from {source} "
                f"(expected image_{1:0{width}d}.jpg ... image_{count:0{width}d}.jpg)"
            )
    extra = sorted(i for i in members if not 1 <= i <= count)
    if extra:
        raise ValueError(
            f"flowers17: {members[extra[0]][0]} is beyond the expected {count} images "
            f"({len(extra)} such file(s) in {source}); wrong archive, or pass count="
        )
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    for index in range(1, count + 1):
        name, read = members[index]
        images[index - 1] = decode_and_resize(read(), name, size)
    labels = np.array([flowers17_label(i) for i in range(1, count + 1)], dtype=np.int64)
    if shuffle:
        order = np.random.default_rng(seed).permutation(count)
        images, labels = images[order], labels[order]
    return images, labels


def keras_validation_split(images, labels, fraction: float):
    """Keras's ``validation_split``: the first floor(n * (1 - fraction)) samples train, the LAST
    ones validate, taken before any shuffling (``model.fit`` shuffles the training part only)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"keras_validation_split: fraction must be in [0, 1), got {fraction}")
    split_at = int(len(images) * (1.0 - fraction))
    return (images[:split_at], labels[:split_at]), (images[split_at:], labels[split_at:])


def scaled(images, labels, transform=None) -> ArrayDataset:
    """An ArrayDataset of uint8 images whose batches come out as float32 in [0, 1] (/ 255, as
    tflearn scales them); ``transform(x, rng)`` then sees each scaled batch."""

    def scale(x, rng):
        x = x / np.float32(255.0)
        return transform(x, rng) if transform is not None else x

    return ArrayDataset(images, labels, scale)
