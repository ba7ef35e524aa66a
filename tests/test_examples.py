"""The examples a reader runs: each one end to end, on small data."""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

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
