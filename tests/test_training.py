import csv
import os
import re
import sys

import numpy as np
import pytest
from PIL import Image

import minidl as mdl
from minidl import data, nn, optim, plots, train
from minidl.models.alexnet import SmallAlexNet
from tests.helpers import tiny_dataset, tiny_net


def tiny_setup(seed=0, nan_image=None, lr=0.05, optimizer="sgd"):
    """A 3-class problem on 96 random 12x12 images: 6 steps an epoch, well under a second.
    ``nan_image``: the index of an image whose pixel (3, 4) is NaN."""
    mdl.manual_seed(seed)
    ds = tiny_dataset(96, nan_image)
    model = tiny_net(4, dropout=0.5)
    if optimizer == "sgd":
        opt = optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, rule="paper")
    else:
        opt = optim.Adam(model.parameters(), lr=lr)
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


def quiet(message):
    pass


def run(setup, epochs, **kwargs):
    model, opt, sched, loader, test_loader = setup
    kwargs.setdefault("log", quiet)
    return train.fit(
        model, loader, test_loader, opt, epochs, scheduler=sched, progress=False, **kwargs
    )


def step_of(loader, epoch, image):
    """The 1-based step of epoch ``epoch`` (1-based) whose batch holds ``image``."""
    order = loader.order(epoch - 1)
    return int(np.flatnonzero(order == image)[0]) // loader.batch_size + 1


def test_a_nan_pixel_stops_the_run_and_keeps_the_last_checkpoint(tmp_path):
    run(tiny_setup(), 1, out_dir=tmp_path)
    before = {name: (tmp_path / name).read_bytes() for name in ("checkpoint.npz", "log.csv")}
    setup = tiny_setup(nan_image=37)
    with pytest.raises(train.NonFiniteLossError) as info:
        run(setup, 3, out_dir=tmp_path, resume=tmp_path / "checkpoint.npz")
    step = step_of(setup[3], 2, 37)
    message = str(info.value)
    assert f"epoch 2, step {step} of 6: the loss is not finite (loss nan" in message
    assert "checkpoint.npz is as it was" in message
    assert (info.value.epoch, info.value.step) == (2, step) and np.isnan(info.value.loss)
    assert [row["epoch"] for row in info.value.history] == [1]
    for name, raw in before.items():  # never NaN weights over the last good checkpoint
        assert (tmp_path / name).read_bytes() == raw
    # the step was not applied: the weights are those after the step before it
    assert all(np.isfinite(p.numpy()).all() for p in setup[0].parameters())


def test_skipping_nonfinite_steps_counts_them(tmp_path):
    messages = []
    history = run(
        tiny_setup(nan_image=37), 2, out_dir=tmp_path, nonfinite="skip", log=messages.append
    )
    assert [row["skipped_steps"] for row in history] == [1, 1]  # the NaN image, once an epoch
    assert "1 steps skipped (non-finite)" in messages[0]
    assert messages[-1] == "2 steps were skipped for a non-finite loss or gradient"
    with open(tmp_path / "log.csv") as f:
        assert [row["skipped_steps"] for row in csv.DictReader(f)] == ["1", "1"]
    with np.load(tmp_path / "checkpoint.npz") as f:
        assert all(np.isfinite(f[k]).all() for k in f.files if k.startswith("model/"))
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        run(tiny_setup(), 1, nonfinite="ignore")


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_a_diverging_learning_rate_stops_with_the_step_and_lr(tmp_path):
    # SGD at lr 100 on the example's model (the tiny one above stays finite): the loss turns
    # inf, then NaN. The run stops, and no NaN is ever written. (Adam at lr 100, where g * g
    # overflows in the update, is the example's test: tests/test_examples.py.)
    mdl.manual_seed(0)
    rng = np.random.default_rng(0)
    ds = data.ArrayDataset(rng.random((64, 28, 28), np.float32), rng.integers(0, 10, 64))
    loader = data.DataLoader(ds, 16, shuffle=True, workers=0)
    model = SmallAlexNet(num_classes=10, dropout=0.0)
    opt = optim.SGD(model.parameters(), lr=100.0)
    with pytest.raises(train.NonFiniteLossError) as info:
        train.fit(model, loader, loader, opt, 3, out_dir=tmp_path, progress=False, log=quiet)
    assert re.search(r"epoch \d, step \d of 4: .*lr 100.0", str(info.value)), str(info.value)
    if (tmp_path / "checkpoint.npz").exists():
        with np.load(tmp_path / "checkpoint.npz") as f:
            assert all(np.isfinite(f[k]).all() for k in f.files if f[k].dtype.kind == "f")


def test_a_checkpoint_is_never_written_with_nan_weights(tmp_path):
    model, opt, *_ = tiny_setup()
    train.save_checkpoint(tmp_path / "c.npz", model, opt)
    raw = (tmp_path / "c.npz").read_bytes()
    model[0].weight.data[0, 0, 0, 0] = np.inf
    with pytest.raises(train.CheckpointError, match=r"0.weight holds NaN or inf"):
        train.save_checkpoint(tmp_path / "c.npz", model, opt)
    assert (tmp_path / "c.npz").read_bytes() == raw
    assert os.listdir(tmp_path) == ["c.npz"]  # no temporary file left behind


def test_log_csv_records_the_rate_each_epoch_trained_with(tmp_path):
    model, opt, _, loader, test_loader = tiny_setup()
    sched = optim.StepLR(opt, step_size=1, gamma=0.5)
    history = run((model, opt, sched, loader, test_loader), 3, out_dir=tmp_path)
    assert [row["lr"] for row in history] == [0.05, 0.025, 0.0125]
    with open(tmp_path / "log.csv") as f:
        assert [float(row["lr"]) for row in csv.DictReader(f)] == [0.05, 0.025, 0.0125]


def optimizer_keys(path):
    with np.load(path) as f:
        return sorted({k.split(".", 1)[1] for k in f.files if k.startswith("optimizer/0.")})


def test_resume_trains_with_the_optimizer_it_is_given(tmp_path):
    run(tiny_setup(lr=2e-3, optimizer="adam"), 1, out_dir=tmp_path / "adam")
    assert optimizer_keys(tmp_path / "adam" / "checkpoint.npz") == ["m", "t", "v"]
    assert train.checkpoint_summary(tmp_path / "adam" / "checkpoint.npz") == {
        "epoch": 1,
        "optimizer": "Adam",
        "lr": 2e-3,
        "scheduler": "ReduceLROnPlateau",
    }
    messages = []
    setup = tiny_setup(lr=0.05, optimizer="sgd")
    history = run(
        setup,
        2,
        out_dir=tmp_path / "sgd",
        resume=tmp_path / "adam" / "checkpoint.npz",
        log=messages.append,
    )
    assert isinstance(setup[1], optim.SGD) and history[-1]["lr"] == 0.05
    assert (
        "holds Adam's state; this run trains with SGD, which starts fresh at lr 0.05"
        in (messages[0])
    )
    assert optimizer_keys(tmp_path / "sgd" / "checkpoint.npz") == ["velocity"]  # one optimizer

    # The same kind: its buffers and the scheduled lr come back, unless another lr is asked for.
    run(tiny_setup(lr=0.05), 1, out_dir=tmp_path / "same")
    setup = tiny_setup(lr=0.2)
    run(setup, 1, resume=tmp_path / "same" / "checkpoint.npz")
    assert setup[1].lr == 0.05 and setup[1].state[0]["velocity"].any()
    messages = []
    setup = tiny_setup()
    history = run(
        setup, 2, resume=tmp_path / "same" / "checkpoint.npz", resume_lr=0.01, log=messages.append
    )
    assert (
        history[-1]["lr"] == 0.01
        and "lr 0.01 (asked for) replaces the checkpoint's 0.05" in (messages[0])
    )


def test_a_model_only_checkpoint_resumes_with_a_fresh_optimizer(tmp_path):
    model = tiny_setup()[0]
    train.save_checkpoint(tmp_path / "model.npz", model, epoch=1)
    messages = []
    setup = tiny_setup(seed=5)
    history = run(setup, 2, resume=tmp_path / "model.npz", log=messages.append)
    assert [row["epoch"] for row in history] == [2]
    assert "holds no optimizer state: SGD starts fresh at lr 0.05" in messages[0]
    assert "ReduceLROnPlateau starts fresh" in messages[1]


def test_zero_epochs_and_zero_lr_are_explicit(tmp_path):
    messages = []
    assert run(tiny_setup(), 0, out_dir=tmp_path / "zero", log=messages.append) == []
    assert not (tmp_path / "zero").exists() and "nothing to train" in messages[0]
    run(tiny_setup(), 1, out_dir=tmp_path)
    stamp = os.stat(tmp_path / "checkpoint.npz").st_mtime_ns
    history = run(tiny_setup(), 1, out_dir=tmp_path, resume=tmp_path / "checkpoint.npz")
    assert len(history) == 1 and os.stat(tmp_path / "checkpoint.npz").st_mtime_ns == stamp
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        run(tiny_setup(), -1)
    setup = tiny_setup(lr=0.0)
    before = [p.numpy().copy() for p in setup[0].parameters()]
    history = run(setup, 1)
    assert history[0]["lr"] == 0.0
    assert all(np.array_equal(a, p.numpy()) for a, p in zip(before, setup[0].parameters()))


def test_broken_checkpoints_name_the_file(tmp_path):
    model, opt, sched, loader, _ = tiny_setup()
    good = tmp_path / "good.npz"
    train.save_checkpoint(good, model, opt, sched, loader, epoch=1)
    raw = good.read_bytes()
    cases = {
        "empty.npz": (b"", "is empty"),
        "truncated.npz": (raw[: len(raw) // 2], "is truncated or corrupt"),
        "text.npz": (b"hello, not an archive", "not an .npz archive"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(train.CheckpointError) as info:
            train.load_checkpoint(tmp_path / name, model, opt)
        assert str(tmp_path / name) in str(info.value) and reason in str(info.value)
    other = nn.Sequential(
        nn.Conv2d(1, 5, 3),
        nn.ReLU(),
        nn.MaxPool2d(3, 2),
        nn.Dropout(),
        nn.Flatten(),
        nn.Linear(80, 3),
    )
    with pytest.raises(train.CheckpointError) as info:
        train.load_checkpoint(good, other)
    message = str(info.value)
    assert str(good) in message and "0.weight has shape (4, 1, 3, 3)" in message
    assert "(5, 1, 3, 3)" in message
    with pytest.raises(FileNotFoundError, match="missing.npz does not exist"):
        train.load_checkpoint(tmp_path / "missing.npz", model)


def test_without_matplotlib_the_run_says_once_how_to_get_curves(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    messages = []
    run(tiny_setup(), 2, out_dir=tmp_path, log=messages.append)
    notes = [m for m in messages if "curves.png" in m]
    assert notes == ["curves.png not written: matplotlib is missing (pip install 'minidl[plot]')"]
    assert not (tmp_path / "curves.png").exists() and (tmp_path / "log.csv").is_file()


def test_all_finite_is_exact():
    big = np.full(4, 3e38, np.float32)  # finite, but their float32 sum is not
    assert train.all_finite([big, np.ones(3, np.float16)])
    for bad in (np.nan, np.inf, -np.inf):
        assert not train.all_finite([np.ones(5, np.float32), np.array([1.0, bad])])


def test_an_epoch_of_only_nonfinite_steps_stops_even_when_skipping():
    model, opt, sched, loader, test_loader = tiny_setup()
    loader.dataset.images[:, 0, 0] = np.nan  # every image
    with pytest.raises(train.NonFiniteLossError, match="epoch 1, all 6 steps had a non-finite"):
        run((model, opt, sched, loader, test_loader), 1, nonfinite="skip")


def test_a_checkpoint_from_before_the_meta_entry_still_resumes(tmp_path):
    run(tiny_setup(), 1, out_dir=tmp_path)
    arrays = train.read_checkpoint(tmp_path / "checkpoint.npz")
    del arrays["meta"]  # as written before the optimizer's kind was recorded
    np.savez(tmp_path / "old.npz", **arrays)
    assert train.checkpoint_summary(tmp_path / "old.npz")["optimizer"] == "SGD"  # from "velocity"
    setup = tiny_setup()
    run(setup, 1, resume=tmp_path / "old.npz")
    assert setup[1].state[0]["velocity"].any()
    messages = []
    setup = tiny_setup(optimizer="adam", lr=1e-3)
    run(setup, 1, resume=tmp_path / "old.npz", log=messages.append)
    assert "holds SGD's state; this run trains with Adam" in messages[0]
