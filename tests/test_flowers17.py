"""Oxford Flowers-17: the loader on generated archives in the published layout (17flowers.tgz with
jpg/image_NNNN.jpg), its errors, Keras's validation split, the Keras AlexNet-with-BatchNorm's
shapes and parameter count, and the recipe's example training a few steps. Nothing downloads."""

import csv
import io
import tarfile
import urllib.request

import numpy as np
import pytest
from PIL import Image

from minidl import nn
from minidl.data import flowers
from minidl.models.keras_alexnet import KerasAlexNet
from tests.test_examples import load


def jpeg_bytes(index: int, size=(12, 9)) -> bytes:
    """A small JPEG whose colour depends on its class and whose pattern on its index."""
    rng = np.random.default_rng(index)
    label = flowers.flowers17_label(index)
    pixels = rng.integers(0, 60, (size[1], size[0], 3)).astype(np.uint8)
    pixels[..., label % 3] += 150
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=95)
    return out.getvalue()


def write_layout(path, count, files=None, folder=False, size=(12, 9)):
    """17flowers.tgz (or an extracted jpg/ folder) holding image_0001.jpg .. image_<count>.jpg and
    files.txt; ``files`` overrides or (with None) removes entries by name."""
    entries = {f"image_{i:04d}.jpg": jpeg_bytes(i, size) for i in range(1, count + 1)}
    entries["files.txt"] = "\n".join(sorted(entries)).encode()
    for name, content in (files or {}).items():
        if content is None:
            entries.pop(name)
        else:
            entries[name] = content
    if folder:
        (path / "jpg").mkdir(parents=True)
        for name, content in entries.items():
            (path / "jpg" / name).write_bytes(content)
        return path / "jpg"
    archive = path / "17flowers.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(f"jpg/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return archive


@pytest.fixture(autouse=True)
def no_network_and_no_user_data(monkeypatch, tmp_path):
    """Nothing here may download or find a real copy in the user's cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("MINIDL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ---- the loader ----------------------------------------------------------------------------------
def test_archive_and_folder_give_the_same_images_and_labels(tmp_path):
    (tmp_path / "a").mkdir()
    archive = write_layout(tmp_path / "a", 170)
    folder = write_layout(tmp_path / "b", 170, folder=True)
    x1, y1 = flowers.load_flowers17(archive, size=20, count=170, shuffle=False)
    x2, y2 = flowers.load_flowers17(folder.parent, size=20, count=170, shuffle=False)
    assert x1.shape == (170, 3, 20, 20) and x1.dtype == np.uint8
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    # 80 consecutive images per class: image_0080 is class 0, image_0081 class 1, 0161 class 2
    assert y1.tolist() == [0] * 80 + [1] * 80 + [2] * 10
    # resized as tflearn does: straight to size x size with Pillow's Lanczos (ANTIALIAS)
    with Image.open(io.BytesIO(jpeg_bytes(81))) as image:
        expected = np.asarray(image.convert("RGB").resize((20, 20), Image.Resampling.LANCZOS))
    assert np.array_equal(x1[80], expected.transpose(2, 0, 1))


def test_shuffle_is_one_seeded_permutation(tmp_path):
    archive = write_layout(tmp_path, 12)
    plain, labels = flowers.load_flowers17(archive, size=8, count=12, shuffle=False)
    x, y = flowers.load_flowers17(archive, size=8, count=12, shuffle=True, seed=5)
    order = np.random.default_rng(5).permutation(12)
    assert np.array_equal(x, plain[order]) and np.array_equal(y, labels[order])
    x_again, _ = flowers.load_flowers17(archive, size=8, count=12, shuffle=True, seed=5)
    assert np.array_equal(x, x_again)


def test_a_missing_image_is_named(tmp_path):
    archive = write_layout(tmp_path, 20, {"image_0007.jpg": None})
    with pytest.raises(FileNotFoundError, match=r"image_0007\.jpg is missing from .*17flowers"):
        flowers.load_flowers17(archive, size=8, count=20)


def test_too_many_images_are_named(tmp_path):
    archive = write_layout(tmp_path, 20, {"image_0021.jpg": jpeg_bytes(21)})
    with pytest.raises(ValueError, match=r"jpg/image_0021\.jpg is beyond the expected 20 images"):
        flowers.load_flowers17(archive, size=8, count=20)


def test_the_full_count_is_required_by_default(tmp_path):
    archive = write_layout(tmp_path, 20)
    with pytest.raises(FileNotFoundError, match=r"image_0021\.jpg is missing"):
        flowers.load_flowers17(archive, size=8)  # count=1360, the published data set


@pytest.mark.parametrize("folder", [False, True], ids=["archive", "folder"])
def test_a_corrupt_image_is_named(tmp_path, folder):
    source = write_layout(tmp_path, 20, {"image_0013.jpg": b"\xff\xd8 not a jpeg"}, folder)
    with pytest.raises(ValueError, match=r"image_0013\.jpg is not a readable image"):
        flowers.load_flowers17(source, size=8, count=20)


def test_a_truncated_archive_is_named(tmp_path):
    archive = write_layout(tmp_path, 20)
    archive.write_bytes(archive.read_bytes()[:-300])
    with pytest.raises(ValueError, match=r"17flowers\.tgz (is truncated|.*cannot be read)"):
        flowers.load_flowers17(archive, size=8, count=20)


def test_a_corrupted_archive_fails_its_gzip_check(tmp_path):
    # tar stops at its end-of-archive blocks, before the gzip trailer: unless the stream is read to
    # its end, a CRC that does not match the data is never seen (the pixels differ silently)
    archive = write_layout(tmp_path, 20)
    content = bytearray(archive.read_bytes())
    content[-8] ^= 0xFF  # the trailer's CRC-32 of the uncompressed data
    archive.write_bytes(bytes(content))
    with pytest.raises(ValueError, match=r"17flowers\.tgz is truncated or corrupt.*CRC"):
        flowers.load_flowers17(archive, size=8, count=20)


def test_not_found_lists_the_places_and_does_not_download(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_DATA", str(tmp_path / "data"))
    with pytest.raises(FileNotFoundError) as err:
        flowers.load_flowers17(size=8)
    message = str(err.value)
    assert str(tmp_path / "data") in message and str(tmp_path / "cache") in message
    assert flowers.FLOWERS17_SHA256 in message


def test_a_download_that_does_not_match_the_checksum_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not the archive"))
    with pytest.raises(OSError, match="SHA-256 .* expected " + flowers.FLOWERS17_SHA256):
        flowers.load_flowers17(size=8, download=True)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # nothing kept


def test_keras_validation_split_takes_the_last_part():
    x, y = np.arange(1360), np.arange(1360) * 10
    (xt, yt), (xv, yv) = flowers.keras_validation_split(x, y, 0.2)
    assert len(xt) == 1088 and len(xv) == 272  # 17 batches of 64 exactly
    assert np.array_equal(xv, x[1088:]) and np.array_equal(yv, y[1088:])
    (xt, _), (xv, _) = flowers.keras_validation_split(np.arange(7), np.arange(7), 0.2)
    assert xt.tolist() == [0, 1, 2, 3, 4] and xv.tolist() == [5, 6]  # floor(7 * 0.8) = 5


def test_scaled_batches_are_tflearns_values():
    images = np.array([[[[0, 255], [128, 7]]]], dtype=np.uint8)
    x, _ = flowers.scaled(images, np.array([3])).batch(np.array([0]))
    assert x.dtype == np.float32
    assert np.array_equal(x, images.astype(np.float32) / np.float32(255.0))


# ---- the write-up's network ----------------------------------------------------------------------
def keras_expected():
    """Shapes and counts worked out by hand from the write-up's layer list (valid padding)."""

    def out(side, k, s=1):
        return (side - k) // s + 1

    conv = [(3, 96, 11, 4, True), (96, 256, 11, 1, True), (256, 384, 3, 1, False)]
    conv += [(384, 384, 3, 1, False), (384, 256, 3, 1, True)]
    side, shapes, total, frozen = 224, [], 0, 0
    for cin, cout, k, s, pooled in conv:
        side = out(side, k, s)
        if pooled:
            side = out(side, 2, 2)
        shapes.append((cout, side, side))
        total += cout * cin * k * k + cout + 4 * cout  # kernel, bias; BN gamma, beta, mean, var
        frozen += 2 * cout
    for fin, fout in ((256 * side * side, 4096), (4096, 4096), (4096, 1000)):
        total += fin * fout + fout + 4 * fout
        frozen += 2 * fout
    total += 1000 * 17 + 17
    return shapes, total, frozen


def test_summary_shapes_and_keras_parameter_count(capsys):
    shapes, total, frozen = keras_expected()
    assert (total, frozen) == (28_096_769, 21_136)
    model = KerasAlexNet()
    rows = model.summary()
    printed = capsys.readouterr().out
    norms = [r for r in rows if r[1] == "BatchNorm2d"]
    assert [r[2] for r in norms] == shapes
    by_name = {r[0]: r for r in rows}
    assert by_name["features.norm1"][3:] == (4 * 96, 2 * 96)
    assert by_name["classifier.flatten"][2] == (256,)
    assert by_name["classifier.fc9"][2] == (17,)
    assert sum(r[3] for r in rows) == total and sum(r[4] for r in rows) == total - frozen
    assert model.keras_counts() == (total, total - frozen)
    assert model.num_parameters() == total - frozen
    assert f"total parameters (as Keras counts them): {total:,}" in printed
    assert f"trainable parameters: {total - frozen:,}" in printed
    assert f"non-trainable parameters: {frozen:,}" in printed
    assert np.array_equal(model.features.norm1.running_var.numpy(), np.ones(96))  # untouched


def test_keras_batchnorm_conventions():
    model = KerasAlexNet()
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(norms) == 8
    assert all(m.momentum == 0.01 and m.eps == 1e-3 for m in norms)  # Keras's 0.99 and 1e-3
    assert all(np.array_equal(m.bias.numpy(), np.zeros(m.num_features)) for m in norms)
    assert np.array_equal(model.classifier.fc6.bias.numpy(), np.zeros(4096))  # Keras: zeros
    limit = np.sqrt(6 / (256 + 4096))  # glorot_uniform
    weights = model.classifier.fc6.weight.numpy()
    assert np.abs(weights).max() <= limit and np.abs(weights).max() > 0.99 * limit


# ---- the recipe, end to end on a generated archive -----------------------------------------------
def test_help_documents_every_setting_and_its_source(capsys):
    example = load("train_flowers17")
    with pytest.raises(SystemExit):
        example.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for source in ("batch_size=64", "validation_split=0.2", "LAST 20%", "learning_rate 0.001",
                   "beta_1", "beta_2", "epsilon 1e-7", "Dropout(0.4)", "shuffle=True",
                   "SHA-256", "image_1360.jpg"):  # fmt: skip
        assert source in text, source
    args = example.parse_args([])
    assert (args.batch_size, args.validation_split, args.lr) == (64, 0.2, 1e-3)
    assert (args.beta1, args.beta2, args.epsilon, args.dropout) == (0.9, 0.999, 1e-7, 0.4)


def test_recipe_trains_a_few_steps_on_a_generated_archive(tmp_path, capsys):
    archive = write_layout(tmp_path, 10, size=(40, 30))
    out = tmp_path / "run"
    accuracy = load("train_flowers17").main(
        ["--data", str(archive), "--count", "10", "--epochs", "1", "--batch-size", "4",
         "--workers", "0", "--out", str(out), "--no-progress"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "on Flowers-17: 8 images, validating on 2" in printed  # Keras's split of 10
    assert printed.strip().splitlines()[-1] == f"validation accuracy: {accuracy:.4f}"
    with open(out / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    assert (out / "curves.png").is_file() and (out / "conv1_filters.png").is_file()
    with np.load(out / "checkpoint.npz") as saved:
        running_var = saved["model/features.norm1.running_var"]
        assert running_var.shape == (96,) and not np.array_equal(running_var, np.ones(96))
        assert "optimizer/0.m" in saved.files  # Adam's state travels with the model
