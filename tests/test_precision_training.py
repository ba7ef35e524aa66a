"""The training loop in a precision mode (docs/precision.md, "Training with a precision mode"):
fit(..., precision="fp16") with float32 master weights and a GradScaler whose skips and scale
show in the log, checkpoints that keep the scaler's state, and the examples' --precision flag."""

import csv

import numpy as np
import pytest

import minidl as mdl
from minidl import data, dtypes, guard, optim, precision, train
from tests.helpers import tiny_dataset, tiny_net
from tests.test_examples import load, small_copy

# float16 gradients at a huge loss scale: inf, and inf - inf = NaN, which is what is tested
pytestmark = [
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
]


def tiny_setup(mode="fp32", nan_image=None, seed=0):
    """A 3-class problem on 64 random 12x12 images, 4 steps an epoch; the model cast to ``mode``
    BEFORE the optimizer is built, so the optimizer keeps float32 master copies."""
    mdl.manual_seed(seed)
    ds = tiny_dataset(64, nan_image)
    model = tiny_net(4)
    precision.Precision(mode).cast_model(model)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = data.DataLoader(ds, 16, shuffle=True, seed=1, workers=0)
    test_loader = data.DataLoader(ds, 32, workers=0)
    return model, opt, loader, test_loader


def fit(setup, epochs, **kwargs):
    model, opt, loader, test_loader = setup
    kwargs.setdefault("log", lambda message: None)
    return train.fit(model, loader, test_loader, opt, epochs, progress=False, **kwargs)


def test_fp16_training_follows_fp32():
    """The same run in float16 (on the NumPy path) follows float32 epoch by epoch; the float32
    run's rows have no loss-scale columns, the float16 run's do, with no step skipped."""
    reference = fit(tiny_setup("fp32"), 3)
    scaler = precision.GradScaler(init_scale=2.0**8)  # no overflow: the same steps as fp32
    half = fit(tiny_setup("fp16"), 3, precision="fp16", scaler=scaler)
    assert "loss_scale" not in reference[-1] and "scaler_skipped_steps" not in reference[-1]
    assert [row["scaler_skipped_steps"] for row in half] == [0, 0, 0]
    assert [row["loss_scale"] for row in half] == [2.0**8] * 3
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(
            [row[key] for row in half], [row[key] for row in reference], rtol=0.02
        )
    assert half[-1]["train_loss"] < half[0]["train_loss"]


def test_bf16_training_follows_fp32():
    """The same run in bfloat16 (on the NumPy path: ml_dtypes arrays, float32 sums and GEMMs)
    follows float32 epoch by epoch, with no loss scaling and no scale in the log."""
    reference = fit(tiny_setup("fp32"), 3)
    setup = tiny_setup("bf16")
    half = fit(setup, 3, precision="bf16")
    assert all(p.dtype == dtypes.bfloat16 for p in setup[0].parameters())
    assert all(state["master"].dtype == np.float32 for state in setup[1].state)
    assert "loss_scale" not in half[-1] and "scaler_skipped_steps" not in half[-1]
    for key in ("train_loss", "test_loss"):
        np.testing.assert_allclose(
            [row[key] for row in half], [row[key] for row in reference], rtol=0.05
        )
    assert half[-1]["train_loss"] < half[0]["train_loss"]


def test_master_weights_stay_float32_through_fit_and_resume(tmp_path):
    setup = tiny_setup("fp16")
    fit(setup, 1, precision="fp16", out_dir=tmp_path)
    model, opt = setup[0], setup[1]
    assert all(p.dtype == np.float16 for p in model.parameters())
    assert all(state["master"].dtype == np.float32 for state in opt.state)
    masters = [state["master"].copy() for state in opt.state]
    again = tiny_setup("fp16", seed=5)
    train.load_checkpoint(tmp_path / "checkpoint.npz", again[0], again[1], log=lambda m: None)
    for state, master in zip(again[1].state, masters):  # not re-rounded from the float16 weights
        assert state["master"].dtype == np.float32
        assert np.array_equal(state["master"], master)


def test_forced_overflow_skips_halves_and_the_run_goes_on(tmp_path):
    """At a scale of 2^22 the first scaled gradients overflow float16: the scaler skips those
    steps and halves, the log says so, the run finishes (no NonFiniteLossError: some steps of
    each epoch were applied) and log.csv has the columns."""
    messages = []
    scaler = precision.GradScaler(init_scale=2.0**22)
    history = fit(
        tiny_setup("fp16"), 2, precision="fp16", scaler=scaler, out_dir=tmp_path,
        log=messages.append,
    )  # fmt: skip
    skipped = history[0]["scaler_skipped_steps"]
    assert skipped >= 1 and scaler.skipped_steps == skipped + history[1]["scaler_skipped_steps"]
    assert 1 <= skipped < 4 and history[0]["loss_scale"] == 2.0**22 * 0.5**skipped
    assert history[0]["skipped_steps"] == 0  # not the nonfinite="skip" path
    scale = f"{history[0]['loss_scale']:g}"
    assert any(
        f"loss scale {scale} ({skipped} steps skipped by loss scaling)" in m for m in messages
    ), messages
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[0]["loss_scale"]) == history[0]["loss_scale"]
    assert int(rows[0]["scaler_skipped_steps"]) == skipped
    assert all(np.isfinite(p.numpy()).all() for p in tiny_setup("fp16")[0].parameters())


def test_a_nonfinite_loss_still_stops_the_run_with_a_scaler():
    """A NaN pixel gives a NaN loss: that stops an fp16 run as it stops an fp32 one; the scaler
    does not swallow it."""
    with pytest.raises(train.NonFiniteLossError, match="the loss is not finite"):
        fit(tiny_setup("fp16", nan_image=5), 1, precision="fp16")


def test_the_scaler_state_survives_a_checkpoint_and_resume_bit_exactly(tmp_path):
    """An fp16 run of 3 epochs, and the same run stopped after 1 and resumed with a fresh scaler:
    the same scales, losses, float16 weights and float32 masters, bit for bit. growth_interval 3
    makes the scale move (halve on the overflowing steps, double after two clean ones)."""

    def scaler():
        return precision.GradScaler(init_scale=2.0**20, growth_interval=2)

    straight_scaler = scaler()
    straight = tiny_setup("fp16")
    expected = fit(straight, 3, precision="fp16", scaler=straight_scaler)
    fit(tiny_setup("fp16"), 1, precision="fp16", scaler=scaler(), out_dir=tmp_path)
    with np.load(tmp_path / "checkpoint.npz", allow_pickle=False) as f:
        assert {"scaler/scale", "scaler/_growth_tracker"} <= set(f.files)
    resumed_scaler = scaler()
    resumed = tiny_setup("fp16", seed=9)
    history = fit(
        resumed, 3, precision="fp16", scaler=resumed_scaler, resume=tmp_path / "checkpoint.npz"
    )
    # the scale moved both ways, and steps were skipped after the checkpoint too
    assert len({row["loss_scale"] for row in expected}) > 1
    assert all(row["scaler_skipped_steps"] for row in expected)
    keys = ("train_loss", "test_loss", "loss_scale", "scaler_skipped_steps")
    assert [[row[k] for k in keys] for row in history] == [
        [row[k] for k in keys] for row in expected
    ]
    assert resumed_scaler.state_dict() == straight_scaler.state_dict()
    for p, q in zip(resumed[0].parameters(), straight[0].parameters()):
        assert np.array_equal(p.numpy(), q.numpy())
    for s, t in zip(resumed[1].state, straight[1].state):
        assert np.array_equal(s["master"], t["master"])


def test_fit_refuses_a_model_not_cast_to_the_precision():
    with pytest.raises(ValueError, match=r"cast_model\(model\) before building the optimizer"):
        fit(tiny_setup("fp32"), 1, precision="fp16")


def test_tf32_runs_the_epochs_in_matmul_mode():
    """tf32: the training batches are drawn with TF32 allowed; afterwards it is off again."""
    seen = []

    class Watching(data.DataLoader):
        def __iter__(self):
            seen.append(precision.tf32_enabled())
            return super().__iter__()

    model, opt, loader, test_loader = tiny_setup("tf32")
    watching = Watching(loader.dataset, 16, shuffle=True, seed=1, workers=0)
    fit((model, opt, watching, test_loader), 1, precision="tf32")
    assert seen == [True] and not precision.tf32_enabled()


def test_no_precision_leaves_the_dtype_and_the_tf32_setting_as_they_are():
    """precision=None (the default) is the loop as it was: a float64 model trains in float64,
    and TF32 set by the caller stays set while it trains."""
    seen = []

    class Watching(data.DataLoader):
        def __iter__(self):
            seen.append(precision.tf32_enabled())
            return super().__iter__()

    model, _, loader, test_loader = tiny_setup()
    model.double()
    opt = optim.SGD(model.parameters(), lr=0.05)
    ds = loader.dataset
    ds = data.ArrayDataset(ds.images, ds.labels, lambda x, rng: x.astype(np.float64) / 255.0)
    watching = Watching(ds, 16, shuffle=True, seed=1, workers=0)
    test_loader = data.DataLoader(ds, 32, workers=0)
    previous = precision.set_tf32(True)
    try:
        history = fit((model, opt, watching, test_loader), 1)
    finally:
        precision.set_tf32(previous)
    assert seen == [True] and "loss_scale" not in history[0]
    assert all(p.dtype == np.float64 for p in model.parameters())


# ---- the example's --precision flag --------------------------------------------------------------
def fashion(*args):
    return load("train_fashion_mnist").main([*map(str, args), "--no-progress", "--workers", "0"])


def test_example_trains_in_fp16_under_the_emulator(tmp_path, capsys, monkeypatch):
    """--precision fp16 end to end on the emulated GPU (the small net, 16 images, 2 steps): the
    log line and log.csv show the loss scale (2^16, halved once per step the scaler skipped)."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    small_copy(tmp_path / "data", n_train=16, n_test=8)
    run = ["--data", tmp_path / "data", "--epochs", 1, "--batch-size", 8, "--out", tmp_path / "run"]
    accuracy = fashion(*run, "--device", "cuda", "--precision", "fp16")
    out = capsys.readouterr().out
    assert ", cuda, fp16, adam" in out and 0.0 <= accuracy <= 1.0
    with open(tmp_path / "run" / "log.csv") as f:
        row = next(csv.DictReader(f))
    skipped, scale = int(row["scaler_skipped_steps"]), float(row["loss_scale"])
    assert scale == 2.0**16 * 0.5**skipped
    assert (
        f"loss scale {scale:g}" + (f" ({skipped} steps skipped by loss scaling)" if skipped else "")
        in out
    )
    with np.load(tmp_path / "run" / "checkpoint.npz", allow_pickle=False) as f:
        assert float(f["scaler/scale"]) == scale


def test_example_trains_and_resumes_in_bf16_under_the_emulator(tmp_path, capsys, monkeypatch):
    """--precision bf16 end to end on the emulated GPU: bfloat16 weights, no loss scale in the
    log; the checkpoint (bfloat16 kept exactly as float32, .npz has no bfloat16) resumes into a
    bfloat16 model with its float32 master weights unrounded."""
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    small_copy(tmp_path / "data", n_train=16, n_test=8)
    run = ["--data", tmp_path / "data", "--batch-size", 8, "--out", tmp_path / "run"]
    fashion(*run, "--epochs", 1, "--device", "cuda", "--precision", "bf16")
    out = capsys.readouterr().out
    assert ", cuda, bf16, adam" in out and "loss scale" not in out
    with np.load(tmp_path / "run" / "checkpoint.npz", allow_pickle=False) as f:
        weights = {k: f[k] for k in f.files if k.startswith("model/")}
        masters = {k: f[k] for k in f.files if k.endswith(".master")}  # optimizer/<i>.master
        assert all(v.dtype == np.float32 for v in weights.values()) and len(masters) == len(weights)
        # the stored weights are the masters rounded to bfloat16, exactly
        for key, master in masters.items():
            index = int(key.split("/")[1].split(".")[0])
            stored = list(weights.values())[index]
            assert np.array_equal(stored, master.astype(dtypes.bfloat16).astype(np.float32))
    fashion(*run, "--epochs", 2, "--device", "cuda", "--precision", "bf16",
            "--resume", tmp_path / "run" / "checkpoint.npz")  # fmt: skip
    out = capsys.readouterr().out
    assert "epoch 2:" in out and "epoch 1:" not in out


def test_example_refuses_16bit_on_the_cpu(tmp_path):
    small_copy(tmp_path / "data", n_train=8, n_test=8)
    run = ["--data", tmp_path / "data", "--epochs", 1, "--out", tmp_path / "run"]
    for mode in ("tf32", "fp16", "bf16"):
        with pytest.raises(SystemExit, match="GPU only"):
            fashion(*run, "--precision", mode)
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit, match="GPU only"):  # the image-folder example, the same rule
        load("train_imagefolder").main(["--train", str(tmp_path / "data"), "--precision", "fp16"])


def test_an_epoch_the_scaler_skipped_entirely_stops_the_run(tmp_path):
    """At a scale of 2^100 every step of epoch 1 overflows float16 and is skipped: the run stops,
    naming the scale it reached, and writes no checkpoint of an epoch that learnt nothing."""
    scaler = precision.GradScaler(init_scale=2.0**100)
    with pytest.raises(train.NonFiniteLossError) as info:
        fit(tiny_setup("fp16"), 2, precision="fp16", scaler=scaler, out_dir=tmp_path)
    message = str(info.value)
    assert "epoch 1, the loss scaler skipped all 4 steps" in message
    assert f"down to loss scale {2.0**96:g}" in message and "nothing was learnt" in message
    assert not (tmp_path / "checkpoint.npz").exists()


def test_steps_the_scaler_skipped_in_a_row_stop_the_run(monkeypatch):
    """SCALER_SKIPS_IN_A_ROW skips one after another stop the run inside the epoch (3 here)."""
    monkeypatch.setattr(guard, "SCALER_SKIPS_IN_A_ROW", 3)
    scaler = precision.GradScaler(init_scale=2.0**100)
    with pytest.raises(train.NonFiniteLossError) as info:
        fit(tiny_setup("fp16"), 1, precision="fp16", scaler=scaler)
    assert "epoch 1, step 3 of 4: the loss scaler skipped the last 3 steps" in str(info.value)
    assert f"loss scale {2.0**97:g}" in str(info.value)


def test_the_scale_stops_at_its_floor():
    """A thousand and more skips in a row: the scale stops at GradScaler.MIN_SCALE (2^-24)
    instead of reaching 0, where 1 / scale divided by zero."""
    weight = mdl.tensor(np.ones(2, np.float32), requires_grad=True)
    opt = optim.SGD([weight], lr=0.1)
    scaler = precision.GradScaler()
    for _ in range(1200):
        weight.grad = mdl.tensor(np.array([np.inf, 0.0], np.float32))
        assert not scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == precision.GradScaler.MIN_SCALE == 2.0**-24
    assert np.array_equal(weight.numpy(), [1.0, 1.0])
