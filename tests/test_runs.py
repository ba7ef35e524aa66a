"""What a run does with its output folder (docs/checkpoints.md, "The run's folder"): a new run
refuses a folder that holds a checkpoint, a run holds a lock there, a checkpoint that cannot be
written says which and why, and a model without a convolution still writes its folder."""

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from minidl import nn, optim, train
from tests.test_examples import fashion, load, small_copy
from tests.test_training import run, tiny_setup


def messages_of(setup, epochs, **kwargs):
    messages = []
    run(setup, epochs, log=messages.append, **kwargs)
    return messages


def test_a_new_run_refuses_a_folder_that_holds_a_checkpoint(tmp_path):
    run(tiny_setup(), 1, out_dir=tmp_path)
    before = (tmp_path / "checkpoint.npz").read_bytes()
    with pytest.raises(train.CheckpointError) as info:
        run(tiny_setup(seed=1), 1, out_dir=tmp_path)
    message = str(info.value)
    assert str(tmp_path / "checkpoint.npz") in message and "already exists" in message
    assert "resume" in message and "overwrite=True (--overwrite)" in message
    assert (tmp_path / "checkpoint.npz").read_bytes() == before
    # resuming into it, or overwriting on purpose, is allowed
    history = run(tiny_setup(), 2, out_dir=tmp_path, resume=tmp_path / "checkpoint.npz")
    assert [row["epoch"] for row in history] == [1, 2]
    history = run(tiny_setup(seed=1), 1, out_dir=tmp_path, overwrite=True)
    assert len(history) == 1 and (tmp_path / "checkpoint.npz").read_bytes() != before
    assert not (tmp_path / "run.lock").exists()  # released after each run


def test_a_run_holds_a_lock_and_takes_over_a_stale_one(tmp_path):
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run.lock").write_text(f"{alive.pid}\n")
        with pytest.raises(
            train.CheckpointError, match=f"in use by another run .process {alive.pid}"
        ):
            run(tiny_setup(), 1, out_dir=tmp_path)
        assert not (tmp_path / "checkpoint.npz").exists()
    finally:
        alive.kill()
        alive.wait()
    # its process is gone: the lock is stale, taken over, said so, and released at the end
    messages = messages_of(tiny_setup(), 1, out_dir=tmp_path)
    assert any(
        f"stale lock (process {alive.pid} is not running) is taken over" in m for m in messages
    )
    assert not (tmp_path / "run.lock").exists() and (tmp_path / "checkpoint.npz").is_file()


def test_the_lock_holds_this_process_and_is_released_on_an_error(tmp_path, monkeypatch):
    seen = []

    def epoch(self, epoch, progress):
        seen.append((tmp_path / "run.lock").read_text())
        raise KeyboardInterrupt

    monkeypatch.setattr(train._Run, "epoch", epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_setup(), 1, out_dir=tmp_path)
    assert seen == [f"{os.getpid()}\n"] and not (tmp_path / "run.lock").exists()


def test_a_folder_that_cannot_be_written_stops_before_epoch_1(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    messages = []
    with pytest.raises(train.CheckpointError) as info:
        run(tiny_setup(), 1, out_dir=tmp_path / "file" / "run", log=messages.append)
    assert f"cannot write to {tmp_path / 'file' / 'run'}" in str(info.value)
    assert "nothing was trained" in str(info.value) and messages == []


@pytest.mark.parametrize("code", [errno.EFBIG, errno.ENOSPC])
def test_a_checkpoint_that_cannot_be_written_names_the_file_and_keeps_the_last(
    tmp_path, monkeypatch, code
):
    run(tiny_setup(), 1, out_dir=tmp_path)
    checkpoint = tmp_path / "checkpoint.npz"
    before = checkpoint.read_bytes()

    def savez(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(np, "savez", savez)
    with pytest.raises(train.CheckpointError) as info:
        run(tiny_setup(), 2, out_dir=tmp_path, resume=checkpoint)
    message = str(info.value)
    assert f"checkpoint {checkpoint} could not be written: {os.strerror(code)}" in message
    assert "the previous checkpoint there is kept" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert checkpoint.read_bytes() == before
    assert not list(tmp_path.glob(".checkpoint.npz.*.partial"))
    assert not (tmp_path / "run.lock").exists()


def test_a_model_without_a_convolution_writes_its_folder_without_filters(tmp_path):
    _, _, _, loader, test_loader = tiny_setup()
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.ReLU(), nn.Linear(16, 3))
    opt = optim.SGD(mlp.parameters(), lr=0.05)
    history = run((mlp, opt, None, loader, test_loader), 1, out_dir=tmp_path)
    assert len(history) == 1 and (tmp_path / "checkpoint.npz").is_file()
    assert not (tmp_path / "conv1_filters.png").exists()


def test_the_examples_refuse_a_used_out_folder_unless_overwrite(tmp_path, capsys):
    small_copy(tmp_path)
    run = ["--data", tmp_path, "--epochs", 1, "--batch-size", 32, "--out", tmp_path / "run"]
    fashion(*run)
    with pytest.raises(SystemExit) as info:
        fashion(*run)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: {tmp_path / 'run' / 'checkpoint.npz'} already exists" in err
    assert "--overwrite" in err
    fashion(*run, "--overwrite")
    assert capsys.readouterr().out.splitlines()[-1].startswith("test accuracy")


@pytest.mark.parametrize(
    "example, flag, value, says",
    [
        ("train_fashion_mnist", "--lr", "nan", "must be a finite number"),
        ("train_fashion_mnist", "--lr", "-0.1", "must be >= 0"),
        ("train_fashion_mnist", "--limit", "-5", "must be >= 1"),
        ("train_fashion_mnist", "--batch-size", "0", "must be >= 1"),
        ("train_fashion_mnist", "--dropout", "1", "must be < 1"),
        ("train_fashion_mnist", "--momentum", "inf", "must be a finite number"),
        ("train_flowers17", "--fashion-mnist", "-5", "must be >= 1"),
        ("train_flowers17", "--validation-split", "1.5", "must be < 1"),
        ("train_imagefolder", "--crop", "0", "must be >= 1"),
        ("two_tower_alexnet", "--size", "-1", "must be >= 1"),
    ],
)
def test_the_examples_refuse_a_bad_number_when_the_command_line_is_read(
    example, flag, value, says, capsys
):
    """Python's int and float take -5, nan and inf: --fashion-mnist -5 sliced from the end, and
    --lr nan trained until a NaN loss blamed the rate. Now argparse refuses them, naming the flag,
    before any data is read (exit status 2)."""
    argv = [flag, value] + (["--train", "nowhere"] if example == "train_imagefolder" else [])
    with pytest.raises(SystemExit) as info:
        load(example).main(argv)
    assert info.value.code == 2
    assert f"argument {flag}: {says}" in capsys.readouterr().err


def test_log_and_pictures_that_cannot_be_written_are_said_and_the_run_goes_on(tmp_path):
    """log.csv, curves.png and conv1_filters.png only show what the checkpoint holds: one that
    cannot be written (here a folder stands in its place) is said, naming the file and the
    reason, and the run trains and checkpoints every epoch (it ended with a raw OSError)."""
    pytest.importorskip("matplotlib")
    for name in ("log.csv", "curves.png", "conv1_filters.png"):
        (tmp_path / name).mkdir()
    messages = messages_of(tiny_setup(), 2, out_dir=tmp_path)
    for name in ("log.csv", "curves.png"):
        said = [m for m in messages if m.startswith(f"{tmp_path / name} not written: ")]
        assert len(said) == 2, messages  # once an epoch
        assert "Is a directory" in said[0] and "checkpoint.npz holds its history" in said[0]
    assert any(m.startswith(f"{tmp_path / 'conv1_filters.png'} not written") for m in messages)
    assert train.checkpoint_summary(tmp_path / "checkpoint.npz")["epoch"] == 2
