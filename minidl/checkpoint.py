"""Checkpoints that resume exactly: what ``fit`` writes after every epoch and reads on resume.

A checkpoint is one ``.npz`` file read with ``allow_pickle=False``: the model's arrays (parameters
and buffers), the optimizer's, the schedule's numbers, the loss scaler's, the loader's epoch and
the global generator's state (as JSON text), so a run resumed from one continues with the same
batches, dropout masks and updates. It is written atomically and durably, and never with
non-finite weights. ``docs/checkpoints.md`` says what is guaranteed and what a resume does when
the checkpoint and the run disagree.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from minidl import distributed, dtypes
from minidl import optim as mdl_optim
from minidl import random as mdl_random

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def save_checkpoint(
    path,
    model,
    optimizer=None,
    scheduler=None,
    loader=None,
    epoch: int = 0,
    history=None,
    scaler=None,
) -> None:
    """Write what a resume needs to ``path`` (.npz, no pickle), atomically and durably.

    The arrays go to a temporary file beside ``path``, which is synced to the disk before one
    rename replaces ``path``, and the folder is synced after the rename: a crash or a kill at any
    moment leaves the previous checkpoint or the new one, whole. A model holding NaN or inf is
    refused (CheckpointError), so a diverged run never overwrites the last good checkpoint."""
    path = Path(path)
    model_state = model.state_dict()
    for name, value in model_state.items():
        if not np.isfinite(value).all():
            raise CheckpointError(
                f"save_checkpoint: the model's {name} holds NaN or inf; {path} was not written "
                "(the last checkpoint there, if any, is kept)"
            )
    # .npz has no bfloat16 (it would read back as raw 2-byte records): a bfloat16 array is kept
    # as float32, which holds it exactly, and load_state_dict rounds it back to the parameter's
    # dtype, exactly again.
    arrays = {
        f"model/{k}": v.astype(np.float32) if dtypes.is_bfloat16(v.dtype) else v
        for k, v in model_state.items()
    }
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    if scheduler is not None:
        arrays.update({f"scheduler/{k}": v for k, v in scheduler.state_dict().items()})
    if scaler is not None:  # GradScaler: scale and growth tracker (empty when disabled)
        arrays.update({f"scaler/{k}": np.array(v) for k, v in scaler.state_dict().items()})
    arrays["epoch"] = np.array(epoch)
    arrays["loader_epoch"] = np.array(loader.epoch if loader is not None else epoch)
    arrays["rng"] = np.array(json.dumps(mdl_random.generator().bit_generator.state))
    arrays["history"] = np.array(json.dumps(history or []))
    arrays["world_size"] = np.array(distributed.world_size())  # resume needs as many ranks
    meta = {
        "format": CHECKPOINT_FORMAT,
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    _write_atomically(path, arrays)


def _write_atomically(path: Path, arrays: dict) -> None:
    """``np.savez`` to a temporary file beside ``path``, synced, then renamed onto ``path``; the
    folder is synced after the rename. A kill at any moment leaves the old file or the new one.
    A write that fails (a full disk, a file-size limit, a read-only folder) raises one
    CheckpointError naming the file and the reason, the previous checkpoint kept."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(path)
        _write_and_rename(path, arrays)
    except OSError as err:
        kept = "the previous checkpoint there is kept" if path.exists() else "none was there"
        raise CheckpointError(
            f"checkpoint {path} could not be written: {_reason(err)}; {kept}"
        ) from None
    _fsync_folder(path.parent)  # and the rename itself survives a power cut


def _write_and_rename(path: Path, arrays: dict) -> None:
    # One temporary name per process, so two writers never write into the same file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on the disk before the name points at them
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _reason(err: OSError) -> str:
    return err.strerror or str(err) or type(err).__name__


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":  # Windows cannot open a folder; its rename is as durable as it gets
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_partials(path: Path) -> None:
    """Delete temporary files left by writers of ``path`` that were killed mid-write."""
    for partial in path.parent.glob(f".{path.name}.*.partial"):
        pid = partial.name[len(path.name) + 2 : -len(".partial")]
        if pid.isdigit() and not _process_alive(int(pid)):
            partial.unlink(missing_ok=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


# ---- the run's folder ------------------------------------------------------------------------
def refuse_overwrite(folder, resume, overwrite: bool) -> None:
    """A new run (no ``resume``) in a folder that holds a checkpoint would write over it: refused
    with a CheckpointError naming it, unless ``overwrite``."""
    checkpoint = Path(folder) / "checkpoint.npz"
    if resume is None and not overwrite and checkpoint.exists():
        raise CheckpointError(
            f"{checkpoint} already exists and a new run would write over it: continue that run "
            f"with resume={str(checkpoint)!r} (--resume), write to a new folder, or replace it "
            "with overwrite=True (--overwrite)"
        )


@contextlib.contextmanager
def run_lock(folder, log=print):
    """Hold ``folder/run.lock`` while a run writes there, so that two runs never share a folder.

    The lock file is created atomically (O_EXCL) and holds this process's id; creating it is also
    the check, before epoch 1, that the folder can be written (CheckpointError if not). A lock
    left by a process that is no longer running is taken over, and ``log`` says so. It is
    removed when the run ends, normally or by an error. In a data-parallel job rank 0 takes it
    and every rank raises rank 0's error, if any (``distributed.agree``)."""
    lock, error = Path(folder) / "run.lock", None
    if distributed.is_main():  # in a data-parallel job rank 0 alone writes, so holds the lock
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            _take_lock(lock, log)
        except OSError as err:
            error = CheckpointError(
                f"cannot write to {lock.parent} ({lock}: {_reason(err)}); nothing was trained"
            )
        except CheckpointError as err:
            error = err
    distributed.agree(error)  # every rank stops here, or none
    try:
        yield lock
    finally:
        if distributed.is_main():
            lock.unlink(missing_ok=True)


def _take_lock(lock: Path, log) -> None:
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and _process_alive(owner):
                raise CheckpointError(
                    f"{lock.parent} is in use by another run (process {owner} holds {lock}): "
                    "wait for it to end, or write to another folder"
                ) from None
            log(f"{lock}: a stale lock (process {owner} is not running) is taken over")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        return


def _lock_owner(lock: Path) -> int | None:
    """The process id a lock file holds; None if it holds none (or is gone)."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def read_checkpoint(path) -> dict[str, np.ndarray]:
    """Every array of a checkpoint; CheckpointError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if not isinstance(f, np.lib.npyio.NpzFile):
                raise CheckpointError(f"checkpoint {path} is a single .npy array, not an .npz")
            return {k: f[k] for k in f.files}
    except ValueError as err:
        if "pickle" in str(err):  # NumPy takes any file that is not .npy/.npz for a pickle
            raise CheckpointError(
                f"checkpoint {path} is not an .npz archive (NumPy would read it as a pickle, "
                "which minidl never loads)"
            ) from None
        raise CheckpointError(f"checkpoint {path} cannot be read: {err}") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from None


def _section(data: dict, name: str) -> dict:
    prefix = f"{name}/"
    return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}


def _meta(data: dict) -> dict:
    """The checkpoint's kinds; for a checkpoint older than the "meta" entry, the optimizer's kind
    is read from its buffer names."""
    if "meta" in data:
        return json.loads(str(data["meta"]))
    state = _section(data, "optimizer")
    names = {key.split(".", 1)[1] for key in state if "." in key}
    kind = next(
        (
            cls.__name__
            for cls in (mdl_optim.SGD, mdl_optim.Adam)
            if names and names <= set(cls.state_names)
        ),
        None,
    )
    return {"format": 0, "optimizer": kind, "scheduler": None}


def checkpoint_summary(path) -> dict:
    """What a checkpoint holds, without a model: epoch, optimizer and scheduler kinds (None when
    it was saved without one) and the optimizer's learning rate (None without an optimizer)."""
    data = read_checkpoint(path)
    meta = _meta(data)
    state = _section(data, "optimizer")
    return {
        "epoch": int(data["epoch"]) if "epoch" in data else None,
        "optimizer": meta.get("optimizer") if state else None,
        "lr": float(state["lr"]) if "lr" in state else None,
        "scheduler": meta.get("scheduler"),
    }


def load_checkpoint(
    path, model, optimizer=None, scheduler=None, loader=None, lr=None, log=print, scaler=None
) -> tuple[int, list]:
    """Restore what ``save_checkpoint`` wrote; returns (epoch, history).

    The model must match name for name and shape for shape (CheckpointError names the entry).
    The optimizer you pass is the one that trains: its buffers and learning rate are restored
    when the checkpoint holds the same kind; otherwise (another kind, or a model-only
    checkpoint) it starts fresh, at its own learning rate, and ``log`` says so. ``lr``, when
    given, replaces the restored learning rate. The scheduler follows the same rule, and so
    does an enabled ``scaler`` (its scale and growth tracker)."""
    path = Path(path)
    data = read_checkpoint(path)
    missing = [k for k in ("epoch", "rng", "history") if k not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {missing}: not a minidl checkpoint")
    saved_world = int(data.get("world_size", 1))  # checkpoints from before it: one process
    if saved_world != distributed.world_size():
        raise CheckpointError(
            f"checkpoint {path} was written by a run on {saved_world} process(es); resume it on "
            f"the same number (this run has {distributed.world_size()}): the loader's shards, "
            "and so the batches each rank reads, depend on it"
        )
    meta = _meta(data)
    try:
        model.load_state_dict(_section(data, "model"))
    except (KeyError, ValueError) as err:
        message = err.args[0] if err.args else str(err)
        raise CheckpointError(f"checkpoint {path} does not fit this model: {message}") from None
    if optimizer is not None:
        _load_optimizer(path, optimizer, _section(data, "optimizer"), meta.get("optimizer"), log)
        if lr is not None and lr != optimizer.lr:
            log(f"lr {lr} (asked for) replaces the checkpoint's {optimizer.lr}")
            optimizer.lr = float(lr)
    if scheduler is not None:
        state, kind = _section(data, "scheduler"), type(scheduler).__name__
        if not state or meta.get("scheduler") not in (None, kind):
            saved = meta.get("scheduler") if state else "no scheduler"
            log(f"{path} holds {saved}'s state; this run's {kind} starts fresh")
        else:
            scheduler.load_state_dict(state)
    if scaler is not None and scaler.enabled:
        state = _section(data, "scaler")
        if not state:
            log(f"{path} holds no loss scaler's state; this run's starts at {scaler.get_scale()}")
        else:
            scaler.load_state_dict({k: v.item() for k, v in state.items()})
    if loader is not None:
        loader.epoch = int(data.get("loader_epoch", data["epoch"]))
    mdl_random.generator().bit_generator.state = json.loads(str(data["rng"]))
    return int(data["epoch"]), json.loads(str(data["history"]))


def _load_optimizer(path: Path, optimizer, state: dict, saved_kind, log) -> None:
    kind = type(optimizer).__name__
    if not state:
        log(f"{path} holds no optimizer state: {kind} starts fresh at lr {optimizer.lr}")
        return
    if saved_kind is not None and saved_kind != kind:
        log(
            f"{path} holds {saved_kind}'s state; this run trains with {kind}, which starts "
            f"fresh at lr {optimizer.lr} ({saved_kind}'s state is dropped)"
        )
        return
    names = getattr(optimizer, "state_names", ()) or None  # None: a custom optimizer, unchecked
    for key, value in state.items():
        if key == "lr":
            continue
        index, name = key.split(".", 1)
        if int(index) >= len(optimizer.params) or (names is not None and name not in names):
            raise CheckpointError(
                f"checkpoint {path}: optimizer entry {key} does not fit this {kind} "
                f"({len(optimizer.params)} parameters, buffers {names})"
            )
        shape = optimizer.params[int(index)].shape
        if value.ndim and tuple(value.shape) != tuple(shape):
            raise CheckpointError(
                f"checkpoint {path}: optimizer entry {key} has shape {tuple(value.shape)}, "
                f"its parameter {tuple(shape)}"
            )
    optimizer.load_state_dict(state)
