import numpy as np
import pytest
from PIL import Image

import minidl as mdl
from minidl import data, nn, optim, plots, train
from minidl.models.alexnet import SmallAlexNet


def tiny_setup(seed=0):
    mdl.manual_seed(seed)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 12, 12), dtype=np.uint8)
    labels = rng.integers(0, 3, 96)
    ds = data.ArrayDataset(images, labels, lambda x, rng: x / 255.0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Dropout(0.5),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, rule="paper")
    sched = optim.ReduceLROnPlateau(opt, patience=0)
    loader = data.DataLoader(ds, 16, shuffle=True, seed=1)
    test_loader = data.DataLoader(ds, 32)
    return model, opt, sched, loader, test_loader


def losses(history):
    return [(h["train_loss"], h["test_loss"], h["lr"]) for h in history]


def test_resume_continues_exactly(tmp_path):
    model, opt, sched, loader, test_loader = tiny_setup()
    straight = train.fit(
        model, loader, test_loader, opt, 2, scheduler=sched, progress=False, log=lambda m: None
    )

    model, opt, sched, loader, test_loader = tiny_setup()
    train.fit(
        model,
        loader,
        test_loader,
        opt,
        1,
        scheduler=sched,
        out_dir=tmp_path,
        progress=False,
        log=lambda m: None,
    )
    model, opt, sched, loader, test_loader = tiny_setup(seed=123)  # fresh objects, other seed
    resumed = train.fit(
        model,
        loader,
        test_loader,
        opt,
        2,
        scheduler=sched,
        resume=tmp_path / "checkpoint.npz",
        progress=False,
        log=lambda m: None,
    )
    assert losses(resumed) == losses(straight)
    for name in ("log.csv", "curves.png", "conv1_filters.png"):
        assert (tmp_path / name).is_file()
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as f:  # no pickle needed
        assert "model/0.weight" in f.files


def test_topk_and_ten_crop_evaluation():
    scores = np.array([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1]])
    assert train.topk_correct(scores, np.array([2, 0]), 1) == 1
    assert train.topk_correct(scores, np.array([2, 0]), 2) == 2

    class TenCropSet:
        def __len__(self):
            return 4

        def batch(self, indices, rng):
            x = np.random.default_rng(0).random((len(indices), 10, 1, 12, 12)).astype(np.float32)
            return x, np.array(indices) % 3

    model = tiny_setup()[0]
    result = train.evaluate(model, data.DataLoader(TenCropSet(), 2))
    assert 0 <= result["top1"] <= result["top5"] == 1.0  # 3 classes: top-5 always right


def test_filter_grid_is_an_image(tmp_path):
    w = np.random.default_rng(0).standard_normal((96, 3, 11, 11))
    plots.save_filter_grid(w, tmp_path / "f.png", scale=1)
    image = Image.open(tmp_path / "f.png")
    assert image.mode == "RGB" and image.size == (10 * 12 + 1, 10 * 12 + 1)


def test_a_short_run_on_fashion_mnist_lowers_the_loss():
    try:
        train_set = data.fashion_mnist("train", download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    mdl.manual_seed(0)
    subset = data.ArrayDataset(
        train_set.images[:2048], train_set.labels[:2048], train_set.transform
    )
    model = SmallAlexNet(num_classes=10)
    opt = optim.Adam(model.parameters(), lr=2e-3)
    loader = data.DataLoader(subset, 64, shuffle=True)
    before = train.evaluate(model, loader)["loss"]
    train.train_epoch(model, loader, opt, progress=False)
    train.train_epoch(model, loader, opt, progress=False)
    after = train.evaluate(model, loader)
    assert after["loss"] < 0.7 * before and after["top1"] > 0.6
