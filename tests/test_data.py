import gzip
import re
import struct

import numpy as np
import pytest
from PIL import Image

from minidl import data
from minidl.data import transforms as T


def write_idx(path, array, compress=True):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    opener = gzip.open if compress else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if compress else "x")
    write_idx(path, images, compress)
    assert np.array_equal(data.read_idx(path), images)
    ints = np.array([1, -2, 70000], dtype=">i4")
    write_idx(tmp_path / "i.gz", ints)
    assert data.read_idx(tmp_path / "i.gz").tolist() == [1, -2, 70000]


def corrupt_gzip_files(folder):
    """Fashion-MNIST .gz files broken as files break: cut short, bytes flipped in the deflate
    stream, not gzip at all, empty, a wrong magic number, fewer bytes than the header says."""
    labels = np.arange(200, dtype=np.uint8) % 10
    write_idx(folder / "good.gz", labels)
    whole = (folder / "good.gz").read_bytes()
    files = {
        "truncated.gz": (whole[: len(whole) // 2], "truncated"),
        "flipped.gz": (whole[:20] + bytes(b ^ 0x5A for b in whole[20:40]) + whole[40:], "corrupt"),
        "not-gzip.gz": (b"plain text, not gzip", "not a gzip file"),
        "empty.gz": (gzip.compress(b""), "empty"),
        "magic.gz": (gzip.compress(b"\x12\x34\x56\x78rest"), "bad magic number"),
        "short.gz": (
            gzip.compress(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"abc"),
            r"header says shape \(10,\)",
        ),
    }
    for name, (raw, _) in files.items():
        (folder / name).write_bytes(raw)
    return {name: reason for name, (_, reason) in files.items()}


def test_corrupt_gzip_files_name_the_file_and_what_is_wrong(tmp_path):
    for name, reason in corrupt_gzip_files(tmp_path).items():
        with pytest.raises(ValueError) as info:
            data.read_idx(tmp_path / name)
        assert str(tmp_path / name) in str(info.value)
        assert re.search(reason, str(info.value)), str(info.value)


def test_missing_fashion_mnist_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(data.datasets, "DEBIAN_FOLDER", tmp_path / "nowhere")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "env"))
    with pytest.raises(FileNotFoundError) as info:
        data.find_fashion_mnist(download=False)
    message = str(info.value)
    assert str(tmp_path / "env") in message and str(tmp_path / "nowhere") in message
    assert "apt-get install dataset-fashion-mnist" in message


def write_fashion_mnist(folder, sizes=(("train", 6), ("t10k", 3))):
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in sizes:
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 255, np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8))


def test_an_explicit_folder_is_the_only_place_looked_at(tmp_path, monkeypatch):
    # A complete copy elsewhere (as the system's would be) must never stand in for the folder
    # that was asked for.
    write_fashion_mnist(tmp_path / "system")
    monkeypatch.setattr(data.datasets, "DEBIAN_FOLDER", tmp_path / "system")
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "system"))
    assert data.find_fashion_mnist(download=False) == tmp_path / "system"
    with pytest.raises(FileNotFoundError, match=r"no-such-dir does not exist"):
        data.fashion_mnist("train", tmp_path / "no-such-dir")
    (tmp_path / "a-file").write_text("")
    with pytest.raises(FileNotFoundError, match=r"a-file is not a folder"):
        data.fashion_mnist("train", tmp_path / "a-file")
    write_fashion_mnist(tmp_path / "partial")
    (tmp_path / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        data.fashion_mnist("train", tmp_path / "partial", download=True)
    message = str(info.value)
    assert str(tmp_path / "partial") in message and "lacks t10k-labels-idx1-ubyte.gz" in message


def test_fashion_mnist_from_an_explicit_folder(tmp_path):
    for prefix, n in (("train", 6), ("t10k", 3)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", np.full((n, 28, 28), 255, np.uint8))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n, dtype=np.uint8))
    ds = data.fashion_mnist("test", tmp_path)
    x, y = ds.batch(np.array([0, 2]))
    assert x.shape == (2, 1, 28, 28) and x.dtype == np.float32 and np.all(x == 1.0)
    assert y.tolist() == [0, 2]


def test_the_real_fashion_mnist_when_installed():
    try:
        folder = data.find_fashion_mnist(download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    images, labels = data.load_fashion_mnist("test", folder, download=False)
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [1000] * 10


def make_folder(root, sizes=((40, 30), (32, 48))):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "cat" / "notes.txt").write_text("not an image")


def test_image_folder(tmp_path):
    make_folder(tmp_path)
    ds = data.ImageFolder(tmp_path, T.Compose([T.ResizeShorter(36), T.CenterCrop(32), T.ToCHW()]))
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    x, y = ds.batch(np.arange(4))
    assert x.shape == (4, 3, 32, 32) and y.tolist() == [0, 0, 1, 1]
    png = np.asarray(Image.open(tmp_path / "cat" / "1.png"))
    assert np.array_equal(data.ImageFolder(tmp_path).load(1), png)  # PNG is lossless


def test_image_folder_follows_torchvision_rules(tmp_path):
    make_folder(tmp_path)
    # Jupyter's and macOS's hidden entries: never a class, never an image.
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / ".ipynb_checkpoints" / "0-checkpoint.png").write_bytes(
        (tmp_path / "cat" / "1.png").read_bytes()
    )
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "cat" / ".hidden.png").write_bytes((tmp_path / "cat" / "1.png").read_bytes())
    # torchvision's extensions (in any case) and sub-folders count; other files do not.
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    image.save(tmp_path / "dog" / "2.BMP")
    (tmp_path / "dog" / "more").mkdir()
    image.save(tmp_path / "dog" / "more" / "3.webp")
    (tmp_path / "dog" / "more" / ".git").mkdir()
    image.save(tmp_path / "dog" / "more" / ".git" / "4.png")
    image.save(tmp_path / "dog" / "5.gif")  # Pillow reads it; torchvision leaves it out
    ds = data.ImageFolder(tmp_path)
    assert ds.classes == ["cat", "dog"]
    names = [p.relative_to(tmp_path).as_posix() for p, _ in ds.samples]
    assert names == [
        "cat/0.jpg",
        "cat/1.png",
        "dog/0.jpg",
        "dog/1.png",
        "dog/2.BMP",
        "dog/more/3.webp",
    ]
    assert [label for _, label in ds.samples] == [0, 0, 1, 1, 1, 1]
    assert ds[5][0].shape == (8, 8, 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="class folder.* empty under"):
        data.ImageFolder(tmp_path)


def test_image_folder_errors_name_the_file(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "dog" / "2.jpg").write_bytes(b"\xff\xd8 corrupt")
    ds = data.ImageFolder(tmp_path)
    with pytest.raises(ValueError, match="2.jpg"):
        ds[len(ds) - 1]
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        data.ImageFolder(tmp_path / "missing")


def test_crops_flips_and_ten_crop_return_the_expected_pixels():
    image = np.arange(6 * 8 * 3).reshape(6, 8, 3)
    assert np.array_equal(T.CenterCrop(4)(image), image[1:5, 2:6])
    crop = T.RandomCrop(4)(image, np.random.default_rng(0))
    positions = [(t, s) for t in range(3) for s in range(5)]
    assert any(np.array_equal(crop, image[t : t + 4, s : s + 4]) for t, s in positions)
    flipped = T.RandomHorizontalFlip(p=1.0)(image, np.random.default_rng(0))
    assert np.array_equal(flipped, image[:, ::-1])
    crops = T.TenCrop(4)(image)
    expected = [image[:4, :4], image[:4, 4:], image[2:, :4], image[2:, 4:], image[1:5, 2:6]]
    assert crops.shape == (10, 4, 4, 3)
    for i, e in enumerate(expected):
        assert np.array_equal(crops[i], e)
        assert np.array_equal(crops[i + 5], e[:, ::-1])


def test_resize_shorter_and_mean_subtraction():
    image = np.zeros((50, 100, 3), np.uint8)
    assert T.ResizeShorter(25)(image).shape == (25, 50, 3)
    assert T.ResizeShorter(10)(np.zeros((20, 30, 1), np.uint8)).shape == (10, 15, 1)
    assert T.Resize(56)(np.ones((28, 28, 1), np.float32)).shape == (56, 56, 1)
    out = T.SubtractMean([1.0, 2.0, 3.0])(np.full((2, 2, 3), 10, np.uint8))
    assert out.dtype == np.float32 and out[0, 0].tolist() == [9.0, 8.0, 7.0]


@pytest.mark.parametrize(
    "size, out",
    [((28, 28), (224, 224)), ((28, 28), (10, 10)), ((30, 20), (13, 41)), ((1, 9), (4, 3))],
)
def test_resize_batch_matches_pillow_image_by_image(size, out):
    images = np.random.default_rng(0).random((3, 2, *size)).astype(np.float32)
    batch = T.resize_batch(images, *out)
    assert batch.shape == (3, 2, *out) and batch.dtype == np.float32
    for image, resized in zip(images.reshape(-1, *size), batch.reshape(-1, *out)):
        one = T.resize(image[:, :, None], out[1], out[0])[:, :, 0]
        np.testing.assert_allclose(resized, one, atol=1e-6)
    pixels = (images * 255).astype(np.uint8)
    as_uint8 = T.resize_batch(pixels, *out)
    assert as_uint8.dtype == np.float32
    np.testing.assert_array_equal(as_uint8, T.resize_batch(pixels.astype(np.float32), *out))
    rows = T.bilinear_matrix(28, 10)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)  # each output is a weighted mean
    assert np.count_nonzero(rows[0]) > 2  # shrinking widens the filter: no input pixel skipped


def test_pca_noise_has_the_expected_covariance():
    rng = np.random.default_rng(0)
    pixels = rng.multivariate_normal(
        [120, 110, 100], [[400, 150, 50], [150, 300, 80], [50, 80, 200]], size=(1, 20000)
    )
    mean, values, vectors = T.rgb_statistics([pixels])
    np.testing.assert_allclose(mean, pixels.reshape(-1, 3).mean(0))
    assert values[0] >= values[1] >= values[2]
    noise = T.PCAColorNoise(values, vectors, std=0.1)
    shifts = np.array([noise.shift(rng) for _ in range(20000)])
    expected = vectors @ np.diag((0.1 * values) ** 2) @ vectors.T
    np.testing.assert_allclose(np.cov(shifts.T), expected, rtol=0.1, atol=0.02 * expected.max())
    image = np.zeros((4, 4, 3), np.float32)
    out = noise(image, np.random.default_rng(1))
    assert np.allclose(out - out[0, 0], 0)  # one shift per image, the same for every pixel


def test_loader_order_is_seeded_and_independent_of_threads():
    ds = data.ArrayDataset(np.arange(50 * 4, dtype=np.uint8).reshape(50, 2, 2), np.arange(50))
    one = data.DataLoader(ds, 8, shuffle=True, seed=3, workers=0)
    two = data.DataLoader(ds, 8, shuffle=True, seed=3, workers=2)
    first = [y.tolist() for _, y in one]
    assert first == [y.tolist() for _, y in two]
    assert sorted(sum(first, [])) == list(range(50))
    assert [y.tolist() for _, y in one] != first  # the next epoch is shuffled differently
    assert len(data.DataLoader(ds, 8, drop_last=True)) == 6
    assert all(len(y) == 8 for _, y in data.DataLoader(ds, 8, drop_last=True))


def test_random_transforms_repeat_with_the_seed_whatever_the_threads():
    images = np.arange(40 * 8 * 8, dtype=np.uint8).reshape(40, 8, 8)
    crop = T.RandomCrop(5)

    def transform(x, rng):  # a random 5x5 crop of each image of the batch
        return np.stack([crop(image.transpose(1, 2, 0), rng).transpose(2, 0, 1) for image in x])

    ds = data.ArrayDataset(images, np.arange(40), transform)

    def batches(workers):
        loader = data.DataLoader(ds, 8, shuffle=True, seed=5, workers=workers)
        return [x for x, _ in loader]

    first, again, threaded = batches(0), batches(0), batches(2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first, threaded))
    assert len({a.tobytes() for a in first}) == len(first)


class PairsDataset:
    """A PyTorch-style dataset: __getitem__ returns one (x, y) pair, __len__ the count."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full((2, 3), i, np.float32), i % 3


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_stacks_the_samples_of_a_pytorch_style_dataset(workers):
    loader = data.DataLoader(PairsDataset(5), batch_size=2, shuffle=True, seed=3, workers=workers)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [2, 2, 1]
    order = np.concatenate([x[:, 0, 0] for x, _ in batches]).astype(int)
    assert sorted(order) == list(range(5))
    for x, y in batches:
        assert x.shape[1:] == (2, 3) and x.dtype == np.float32
        assert y.dtype == np.int64 and np.array_equal(y, x[:, 0, 0].astype(int) % 3)


def test_loader_refuses_a_dataset_it_cannot_index_by_name():
    with pytest.raises(TypeError, match=r"DataLoader: the dataset \(a list_iterator\) has neither"):
        data.DataLoader(iter([1, 2]), batch_size=2)


def test_image_folder_follows_no_symlink_loop(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "dog" / "again").symlink_to(tmp_path / "dog", target_is_directory=True)
    (tmp_path / "cat" / "up").symlink_to(tmp_path, target_is_directory=True)
    ds = data.ImageFolder(tmp_path)
    names = [p.relative_to(tmp_path).as_posix() for p, _ in ds.samples]
    assert names == ["cat/0.jpg", "cat/1.png", "dog/0.jpg", "dog/1.png"]


def test_image_folder_names_the_file_of_a_decompression_bomb(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    make_folder(tmp_path)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 10)  # 8x8 images are now "bombs"
    ds = data.ImageFolder(tmp_path)
    with pytest.raises(ValueError, match=r"ImageFolder: cannot read image .*0\.jpg"):
        ds[0]


def test_image_folder_takes_the_training_sets_class_map(tmp_path):
    make_folder(tmp_path / "train")
    (tmp_path / "train" / "eel").mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "train" / "eel" / "0.png")
    train = data.ImageFolder(tmp_path / "train")
    assert train.classes == ["cat", "dog", "eel"]
    make_folder(tmp_path / "val")
    (tmp_path / "val" / "cat").rename(tmp_path / "val" / "eel")  # val: dog and eel, no cat
    val = data.ImageFolder(tmp_path / "val", classes=train.classes)
    assert val.classes == train.classes and val.class_to_idx == train.class_to_idx
    assert sorted({label for _, label in val.samples}) == [1, 2]  # dog and eel, not 0 and 1
    (tmp_path / "val" / "fox").mkdir()
    with pytest.raises(ValueError, match=r"ImageFolder: class folder\(s\) fox under .* not among"):
        data.ImageFolder(tmp_path / "val", classes=train.classes)


def test_train_imagefolder_refuses_a_validation_class_it_was_not_trained_on(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "train_imagefolder.py"
    spec = importlib.util.spec_from_file_location("train_imagefolder", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    make_folder(tmp_path / "train", sizes=((70, 70),) * 2)
    make_folder(tmp_path / "val", sizes=((70, 70),))
    (tmp_path / "val" / "cat").rename(tmp_path / "val" / "eel")  # scored as cat before
    with pytest.raises(ValueError, match=r"class folder\(s\) eel under .*val"):
        example.main(
            ["--train", str(tmp_path / "train"), "--val", str(tmp_path / "val")]
            + ["--epochs", "1", "--batch-size", "2", "--resize", "70", "--crop", "67"]
            + ["--out", str(tmp_path / "run"), "--no-progress", "--workers", "0"]
        )
