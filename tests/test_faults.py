"""Fault injection: a training run killed at random points never loses its last checkpoint, and
resuming after every kill ends with the same weights, bit for bit, as a run never interrupted.

A small run (a tiny conv net with dropout, 192 images, 5 epochs, SGD with momentum and a
StepLR schedule) runs in a child process (``python -c "...child(...)"``). The parent SIGKILLs
it, either after a random delay (mid-epoch, mid-evaluation, at start-up or mid-checkpoint,
wherever it lands) or at a checkpoint write the child pauses on purpose: half-way through
the bytes of the temporary file, or with the file whole but not yet renamed. After each
kill the last checkpoint must load; the next child resumes from it. docs/checkpoints.md says
what is guaranteed.
"""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from minidl import train

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12  # each fault below costs at most 2 epochs of progress: 6 faults fit


def child(out: str, pause: str = "") -> None:
    """The run the parent kills. ``pause``: "" (none), "mid-write" (half of the checkpoint's
    bytes written) or "before-rename" (the temporary file whole, not yet renamed): at its second
    checkpoint write (so each such run makes one epoch of progress first) the child prints
    PAUSED and sleeps there, and the kill lands inside save_checkpoint."""
    import io

    sys.modules["matplotlib"] = None  # curves.png is not the point; importing it is slow
    import minidl as mdl
    from minidl import data, optim
    from tests.helpers import tiny_dataset, tiny_net

    writes = []
    if pause == "mid-write":
        savez = np.savez

        def slow_savez(file, **arrays):
            buffer = io.BytesIO()
            savez(buffer, **arrays)
            raw = buffer.getvalue()
            file.write(raw[: len(raw) // 2])
            file.flush()
            writes.append(file)
            if len(writes) == 2:
                print("PAUSED", flush=True)
                time.sleep(60)
            file.write(raw[len(raw) // 2 :])

        np.savez = slow_savez
    elif pause == "before-rename":
        replace = os.replace

        def slow_replace(source, target):
            writes.append(source)
            if len(writes) == 2:
                print("PAUSED", flush=True)
                time.sleep(60)
            replace(source, target)

        os.replace = slow_replace

    mdl.manual_seed(0)
    dataset = tiny_dataset(192, dtype=np.uint8)
    model = tiny_net(6, dropout=0.3)
    optimizer = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    scheduler = optim.StepLR(optimizer, step_size=2, gamma=0.5)
    loader = data.DataLoader(dataset, 16, shuffle=True, seed=1, workers=0)
    checkpoint = Path(out) / "checkpoint.npz"
    train.fit(
        model,
        loader,
        data.DataLoader(dataset, 96, workers=0),
        optimizer,
        EPOCHS,
        scheduler=scheduler,
        out_dir=out,
        resume=checkpoint if checkpoint.exists() else None,
        progress=False,
        log=lambda message: print(message, flush=True),
    )
    print("DONE", flush=True)


def start(out: Path, pause: str = "") -> subprocess.Popen:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = f"from tests.test_faults import child; child({str(out)!r}, {pause!r})"
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )


def finish(process: subprocess.Popen) -> str:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0 and out.rstrip().endswith("DONE"), out
    return out


def kill(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL


def saved(path: Path) -> dict:
    """The checkpoint's arrays, less the run's wall-clock figures (seconds, images/second)."""
    arrays = train.read_checkpoint(path)
    history = json.loads(str(arrays.pop("history")))
    arrays["history"] = [
        {k: v for k, v in row.items() if k not in ("seconds", "images_per_second")}
        for row in history
    ]
    return arrays


def partials(out: Path) -> list[Path]:
    return sorted(out.glob(".checkpoint.npz.*.partial"))


@pytest.mark.slow
def test_killed_runs_resume_to_the_same_weights(tmp_path):
    process = start(tmp_path / "straight")
    lines = [(time.perf_counter(), line) for line in process.stdout]  # as the child prints them
    assert process.wait() == 0 and lines[-1][1] == "DONE\n", lines
    ends = [when for when, line in lines if line.startswith("epoch ")]
    epoch_seconds = float(np.median(np.diff(ends)))  # one epoch, evaluation and checkpoint
    reference = saved(tmp_path / "straight" / "checkpoint.npz")
    assert int(reference["epoch"]) == EPOCHS

    out = tmp_path / "killed"
    checkpoint = out / "checkpoint.npz"
    chance = random.Random(14)
    epochs_seen = [0]
    faults = ["mid-write", "random", "before-rename", "random", "mid-write", "random"]
    for fault in faults:
        if fault == "random":  # after 0 or 1 epoch of progress, anywhere in the next epoch
            process = start(out)
            for _ in range(chance.randint(0, 1)):
                line = ""
                while not line.startswith("epoch "):
                    line = process.stdout.readline()
                    assert line, "the child ended early"
            time.sleep(chance.uniform(0.0, 1.0) * epoch_seconds)
            kill(process)
        else:
            process = start(out, fault)
            line = ""
            while line.strip() != "PAUSED":  # the child is now inside save_checkpoint
                line = process.stdout.readline()
                assert line, f"the child ended before its checkpoint write ({fault})"
            kill(process)
        if checkpoint.exists():  # the last checkpoint is whole: it reads and its epoch is sane
            epoch = int(train.read_checkpoint(checkpoint)["epoch"])
            assert epochs_seen[-1] <= epoch < EPOCHS, (fault, epochs_seen, epoch)
            epochs_seen.append(epoch)
        if fault != "random":  # the kill did land inside the write: its temporary file is there
            left = partials(out)
            assert len(left) == 1 and left[0].stat().st_size > 0, (fault, left)
    finish(start(out))
    resumed = saved(checkpoint)
    assert sorted(resumed) == sorted(reference)
    for key in reference:
        if key == "history":
            assert resumed[key] == reference[key]
        else:
            assert np.array_equal(resumed[key], reference[key]), key  # bit for bit
    assert partials(out) == []  # a killed writer's temporary file is cleaned up by the next
    assert epochs_seen[-1] > 0, epochs_seen  # some kills landed after a checkpoint existed
    print("epochs seen after each kill:", epochs_seen)


def test_a_checkpoint_reaches_the_disk_before_its_name_does(tmp_path, monkeypatch):
    """Durability, which a kill cannot show (the page cache survives it, a power cut does not):
    the file is synced before the rename, the folder after it."""
    from minidl import nn

    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def record_replace(source, target):
        events.append(("replace", Path(target).name))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "replace", record_replace)
    train.save_checkpoint(tmp_path / "c.npz", nn.Linear(3, 2))
    assert events == [("fsync", "file"), ("replace", "c.npz"), ("fsync", "folder")]
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_missing_compiler_for_the_emulator_says_what_to_do(tmp_path, monkeypatch):
    from minidl import emulator

    monkeypatch.setenv("MINIDL_CACHE", str(tmp_path))  # an empty cache: load() must compile
    monkeypatch.setenv("CXX", "no-such-compiler-g++")
    with pytest.raises(RuntimeError) as info:
        emulator.load(ROOT / "kernels" / "dropout.cu")
    message = str(info.value)
    assert "'no-such-compiler-g++' was not found" in message and "$CXX" in message
    assert "apt-get install g++" in message
