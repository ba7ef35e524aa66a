"""The examples a reader runs: each one end to end, on small data."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from minidl import train
from tests.test_data import write_idx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gradcheck_demo(capsys):
    load("gradcheck_demo").main()
    out = capsys.readouterr().out
    assert "softplus: True" in out and "a wrong backward is caught" in out


def test_check_kernel_under_the_emulator(capsys, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    load("check_kernel").main(["local_response_norm", "--dtype", "float64"])
    out = capsys.readouterr().out
    largest = float(out.split("largest error:")[1].split()[0])
    assert largest < 1e-12


def test_train_fashion_mnist_on_a_small_copy(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 640), ("t10k", 100)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):  # a bright block whose place is the class
            top, left = 2 + 12 * (label // 5), 1 + 5 * (label % 5)
            image[top : top + 10, left : left + 5] = 230
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    accuracy = load("train_fashion_mnist").main(
        [
            "--data",
            str(tmp_path),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--lr",
            "3e-3",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == f"test accuracy: {accuracy:.4f}"
    assert accuracy > 0.5  # chance is 0.1
    assert (tmp_path / "run" / "checkpoint.npz").is_file()


def test_train_imagefolder_with_ten_crops(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 30, 30), (30, 200, 30)]):
        folder = tmp_path / "images" / f"class{c}"
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = (np.array(colour) + rng.integers(-30, 30, (80, 90, 3))).clip(0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(
                folder / f"{i}.{'jpg' if i % 2 else 'png'}"
            )
    load("train_imagefolder").main(
        [
            "--train",
            str(tmp_path / "images"),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--resize",
            "72",
            "--crop",
            "67",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
            "--workers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert "ten-crop top-1 error" in out and out.strip().splitlines()[-1].startswith(
        "test accuracy:"
    )
    assert (tmp_path / "run" / "conv1_filters.png").is_file()
    # an --lr given on resume wins over the checkpoint's (epoch 1 of 1 is done: nothing trains)
    images = ["--train", str(tmp_path / "images"), "--resize", "72", "--crop", "67"]
    load("train_imagefolder").main(
        [*images, "--epochs", "1", "--resume", str(tmp_path / "run" / "checkpoint.npz")]
        + ["--lr", "0.005", "--no-progress", "--out", str(tmp_path / "run")]
    )
    assert "lr 0.005 (asked for) replaces the checkpoint's 0.01" in capsys.readouterr().out


def small_copy(folder, n_train=64, n_test=40, nan_image=None):
    """A small Fashion-MNIST look-alike; ``nan_image`` gets one NaN pixel (float32 idx file)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):  # a bright block whose place is the class
            top, left = 2 + 12 * (label // 5), 1 + 5 * (label % 5)
            image[top : top + 10, left : left + 5] = 230
        if prefix == "train" and nan_image is not None:
            images = images.astype(">f4")
            images[nan_image, 10, 10] = np.nan
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


def fashion(*args):
    return load("train_fashion_mnist").main([*map(str, args), "--no-progress", "--workers", "0"])


def test_a_nan_pixel_stops_the_example_with_status_1(tmp_path, capsys):
    small_copy(tmp_path, nan_image=5)
    run = ["--data", tmp_path, "--epochs", 1, "--batch-size", 32, "--out", tmp_path / "run"]
    with pytest.raises(SystemExit) as info:
        fashion(*run)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "error: training stopped: epoch 1, step " in err and "loss nan" in err
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    fashion(*run, "--nonfinite", "skip")
    out = capsys.readouterr().out
    assert "1 steps skipped (non-finite)" in out and out.splitlines()[-1].startswith(
        "test accuracy"
    )


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_lr_100_stops_the_example_with_status_1(tmp_path, capsys):
    small_copy(tmp_path)
    with pytest.raises(SystemExit) as info:  # Adam, the small net's default: g * g overflows
        fashion(
            "--data",
            tmp_path,
            "--lr",
            100,
            "--epochs",
            3,
            "--batch-size",
            16,
            "--out",
            tmp_path / "run",
        )
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "lr 100.0" in err and "the update overflowed" in err


def test_explicit_values_and_paths_are_honoured(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no-such-dir does not exist"):
        fashion("--data", tmp_path / "no-such-dir", "--out", tmp_path / "run")
    small_copy(tmp_path / "data")
    run = ["--data", tmp_path / "data", "--out", tmp_path / "run"]
    accuracy = fashion(*run, "--epochs", 0, "--lr", 0)
    out = capsys.readouterr().out
    assert (
        "adam lr 0.0, 0 epochs" in out
        and "nothing to train" in out
        and out.splitlines()[-1] == f"test accuracy: {accuracy:.4f}"
    )
    assert not (tmp_path / "run").exists()  # --epochs 0 evaluates and writes nothing
    with pytest.raises(SystemExit) as refused:  # argparse: "argument --limit: must be >= 1"
        fashion("--data", tmp_path / "data", "--limit", 0)
    assert refused.value.code == 2


def test_resume_uses_the_optimizer_and_lr_asked_for(tmp_path, capsys):
    small_copy(tmp_path)
    run = ["--data", tmp_path, "--batch-size", 32, "--out", tmp_path / "run"]
    fashion(*run, "--epochs", 1)  # Adam at 2e-3, then halved by StepLR
    checkpoint = tmp_path / "run" / "checkpoint.npz"
    capsys.readouterr()
    fashion(*run, "--epochs", 2, "--resume", checkpoint, "--optimizer", "sgd", "--lr", 0.05)
    out = capsys.readouterr().out
    assert "sgd lr 0.05" in out and "holds Adam's state; this run trains with SGD" in out
    with np.load(checkpoint) as f:
        assert sorted(k for k in f.files if k.startswith("optimizer/0.")) == [
            "optimizer/0.velocity"
        ]
    with open(tmp_path / "run" / "log.csv") as f:
        assert [line.split(",")[1] for line in f.read().splitlines()] == ["lr", "0.002", "0.05"]
    # the same kind again (sgd, from the checkpoint since --optimizer is left out): its state
    # comes back, and an --lr given replaces the rate StepLR left (0.025)
    fashion(*run, "--epochs", 3, "--resume", checkpoint, "--lr", 0.01)
    out = capsys.readouterr().out
    assert "sgd lr 0.01" in out and "lr 0.01 (asked for) replaces the checkpoint's 0.025" in out
    assert train.checkpoint_summary(checkpoint)["lr"] == 0.005


def test_alexnets_smallest_input_is_the_one_the_docs_give():
    from minidl.models.alexnet import MIN_INPUT_SIZE, AlexNet, feature_size

    assert MIN_INPUT_SIZE == 67  # by hand: pool5 needs 3, pool2 7, pool1 15; (67 - 11) // 4 + 1
    assert feature_size(67) == 1 and feature_size(66) == 0
    with pytest.raises(ValueError, match="input_size 66 is too small .needs at least 67"):
        AlexNet(input_size=66)
    doc = load("train_imagefolder").__doc__
    assert "a crop of at least 67" in doc
