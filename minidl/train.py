"""Training utilities: an epoch loop, evaluation (top-1/top-5, optional ten-crop), checkpoints
that resume exactly and a CSV log; the pictures (curves, conv1's filters) are ``minidl/plots.py``.

Checkpoints are ``.npz`` files read with ``allow_pickle=False``: the model's and optimizer's arrays,
the schedule's numbers, the loader's epoch and the global generator's state (as JSON text), so a
run resumed from one continues with the same batches, dropout masks and updates. They are written
atomically and durably, and never with non-finite weights. ``docs/checkpoints.md`` says what is
guaranteed and what a resume does when the checkpoint and the run disagree.

A step whose loss or gradients are not finite (NaN or inf) is never applied: by default training
stops there with ``NonFiniteLossError`` naming the epoch, the step and the loss; with
``nonfinite="skip"`` such steps are skipped and counted (``skipped_steps`` in the log).

A precision mode (``minidl/precision.py``, ``docs/precision.md``) is chosen per run: ``fit(...,
precision="fp16")``. With a ``GradScaler`` (fp16's default) an inf/NaN gradient is the scaler's
business: it skips the step and halves the scale, the run goes on, and the log shows the scale and
the steps it skipped (``loss_scale``, ``scaler_skipped_steps``); a non-finite loss still stops.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

import minidl.functional as F
from minidl import backend, distributed
from minidl import optim as mdl_optim
from minidl import precision as mdl_precision
from minidl import random as mdl_random
from minidl.autograd import no_grad
from minidl.plots import plot_curves, save_filter_grid
from minidl.tensor import Tensor

NONFINITE = ("stop", "skip")
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """Training stopped at a step whose loss or gradients were not finite (nonfinite="stop").

    That step's update was not applied and nothing was written after it. ``epoch`` and ``step``
    (1-based) say where, ``loss`` is the loss value, ``history`` the epochs finished before."""

    def __init__(self, message: str, epoch, step: int, loss: float, history=None):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss
        self.history = history if history is not None else []


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file."""


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def all_finite(arrays) -> bool:
    """True when no array holds a NaN or an inf.

    Fast path: the sum of their sums, in float32 or wider (a NaN or an inf anywhere makes it NaN
    or inf); np.sum of a CuPy array runs on the GPU (NumPy hands it to CuPy), so a GPU sends back
    one number. Only when that sum is not finite, which huge finite values can also cause, is
    each array looked at element by element."""
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is what is looked for
        for a in arrays:
            total = total + np.sum(a, dtype=np.result_type(a.dtype, np.float32))
    if math.isfinite(float(total)):
        return True
    return all(bool(np.isfinite(a).all()) for a in arrays)


def _gradients(optimizer) -> list:
    return [p.grad.data for p in optimizer.params if p.grad is not None]


def _weights_and_buffers(optimizer) -> list:
    """The parameters and the optimizer's per-parameter arrays (momentum, Adam's moments)."""
    buffers = [v for state in optimizer.state for v in state.values() if getattr(v, "ndim", 0)]
    return [p.data for p in optimizer.params] + buffers


def train_epoch(
    model,
    loader,
    optimizer,
    device: str = "cpu",
    progress: bool = True,
    desc: str = "train",
    nonfinite: str = "stop",
    epoch: int | None = None,
    precision=None,
    scaler=None,
) -> dict:
    """One pass over ``loader``; returns mean loss, accuracy, images/second, seconds and
    ``skipped_steps``. Loss and accuracy count the steps whose loss was finite.

    A step whose loss or gradients are not finite is not applied: nonfinite="stop" raises
    NonFiniteLossError, "skip" counts it and goes on; an epoch in which every step was skipped
    stops either way (nothing was learnt).

    ``precision`` (a ``Precision``; None is fp32): each batch is cast to its storage dtype and
    the loss computed from float32 logits; the model must already be cast. ``scaler`` (an
    enabled ``GradScaler``): backward runs on the scaled loss, and a step whose gradients hold
    inf or NaN is skipped by the scaler, which halves its scale; that is not an error here. The
    result then also holds ``loss_scale`` (after the epoch) and ``scaler_skipped_steps``."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"train_epoch: nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    if scaler is not None and not scaler.enabled:
        scaler = None  # a disabled scaler is no scaler: the checks below stay as they are
    scaler_skipped_before = scaler.skipped_steps if scaler is not None else 0
    model.train()
    total_loss, correct, seen, skipped = 0.0, 0, 0, 0
    where = f"epoch {epoch}, " if epoch is not None else ""
    progress = progress and distributed.is_main()
    start = time.perf_counter()
    bar = _progress(loader, len(loader), desc, progress)
    for step, (x, y) in enumerate(bar, start=1):
        x = Tensor(x, device=device)
        if precision is not None:
            x = precision.cast_input(x)
        logits = model(x)
        loss = F.cross_entropy(mdl_precision.Precision.loss_input(logits), y)  # float32 loss
        optimizer.zero_grad()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        # several processes: every rank now holds the whole batch's gradient, so every rank
        # takes the same decision below (a non-finite gradient anywhere is one everywhere)
        distributed.allreduce_gradients(optimizer.params, weight=len(y))
        batch_loss = loss.item()  # also waits for the GPU, so the rate below is honest
        # Checked before the update, so a bad batch can be skipped without a trace (in
        # data-parallel training: after the gradients are averaged, so every rank agrees). With
        # a scaler, only the loss: an inf/NaN gradient is the scaler's to skip (below).
        if not (
            math.isfinite(batch_loss) and (scaler is not None or all_finite(_gradients(optimizer)))
        ):
            what = "a gradient" if math.isfinite(batch_loss) else "the loss"
            if nonfinite == "stop":
                raise NonFiniteLossError(
                    f"{where}step {step} of {len(loader)}: {what} is not finite (loss "
                    f"{batch_loss}, lr {optimizer.lr}); the update was not applied. Look for "
                    "NaN or inf in the data, or lower the learning rate; nonfinite='skip' "
                    "(--nonfinite skip) skips such steps instead",
                    epoch,
                    step,
                    batch_loss,
                )
            skipped += 1
            continue
        if scaler is None:
            optimizer.step()
            stepped = True
        else:  # skipped (and counted in scaler.skipped_steps) when a gradient is inf/NaN
            stepped = scaler.step(optimizer)
            scaler.update()  # halved after a skip, grown after growth_interval clean steps
        # A finite gradient can still overflow in the update (g * g in Adam, a huge lr): that
        # cannot be undone, so it stops the run whatever ``nonfinite`` says.
        if stepped and not all_finite(_weights_and_buffers(optimizer)):
            raise NonFiniteLossError(
                f"{where}step {step} of {len(loader)}: the update overflowed (loss "
                f"{batch_loss}, lr {optimizer.lr}): the weights or the optimizer's buffers "
                "now hold NaN or inf, and the run cannot go on from them. Lower the learning "
                "rate",
                epoch,
                step,
                batch_loss,
            )
        total_loss += batch_loss * len(y)
        correct += int((backend.to_numpy(logits.data).argmax(axis=1) == y).sum())
        seen += len(y)
        if progress:
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{batch_loss:.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    total_loss, correct, seen = distributed.allreduce_sum([total_loss, correct, seen])  # all ranks
    if seen == 0:
        raise NonFiniteLossError(
            f"{where}all {skipped} steps had a non-finite loss or gradient and were skipped; "
            "nothing was learnt. Look for NaN or inf in the data, or lower the learning rate",
            epoch,
            skipped,
            float("nan"),
        )
    result = {
        "loss": total_loss / seen,
        "accuracy": correct / seen,
        "images_per_second": seen / seconds,
        "seconds": seconds,
        "skipped_steps": skipped,
    }
    if scaler is not None:  # every rank took the same decisions: no reduction needed
        result["loss_scale"] = scaler.get_scale()
        result["scaler_skipped_steps"] = scaler.skipped_steps - scaler_skipped_before
    return result


def topk_correct(scores: np.ndarray, y: np.ndarray, k: int) -> int:
    """How many rows have their label among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((top == y[:, None]).any(axis=1).sum())


def evaluate(model, loader, device: str = "cpu", progress: bool = False, precision=None) -> dict:
    """Mean loss, top-1 and top-5 accuracy. Batches of shape (B, 10, C, H, W) are ten-crop
    batches: the softmax is averaged over each image's ten crops (the paper's test procedure).
    ``precision``: batches cast to its storage dtype, the softmax taken of float32 logits."""
    model.eval()
    total_loss, top1, top5, seen = 0.0, 0, 0, 0
    with no_grad():
        for x, y in _progress(loader, len(loader), "eval", progress):
            crops = 1
            if x.ndim == 5:
                crops = x.shape[1]
                x = x.reshape(-1, *x.shape[2:])
            x = Tensor(x, device=device)
            logits = model(precision.cast_input(x) if precision is not None else x)
            logits = mdl_precision.Precision.loss_input(logits)
            probs = F.softmax(logits, dim=1).numpy().reshape(len(y), crops, -1).mean(axis=1)
            total_loss += float(-np.log(np.maximum(probs[np.arange(len(y)), y], 1e-30)).sum())
            top1 += topk_correct(probs, y, 1)
            top5 += topk_correct(probs, y, 5)
            seen += len(y)
    # each rank evaluated its shard of every batch: sum over the ranks
    total_loss, top1, top5, seen = distributed.allreduce_sum([total_loss, top1, top5, seen])
    return {"loss": total_loss / seen, "top1": top1 / seen, "top5": top5 / seen}


# ---- checkpoints ---------------------------------------------------------------------------------
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
    arrays = {f"model/{k}": v for k, v in model_state.items()}
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
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(path)
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
    _fsync_folder(path.parent)  # and the rename itself survives a power cut


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


# ---- logs ---------------------------------------------------------------------------
def write_csv(path, history: list[dict]) -> None:
    """One row per epoch; the columns are every key seen, in order (a history resumed from an
    older checkpoint may lack the newer ones: those cells stay empty)."""
    if not history:
        return
    fields = list(dict.fromkeys(key for row in history for key in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(history)


# ---- the loop ------------------------------------------------------------------------------------
def fit(
    model,
    train_loader,
    test_loader,
    optimizer,
    epochs: int,
    device: str = "cpu",
    scheduler=None,
    out_dir=None,
    resume=None,
    progress: bool = True,
    log=print,
    nonfinite: str = "stop",
    resume_lr: float | None = None,
    precision=None,
    scaler=None,
) -> list[dict]:
    """Train for ``epochs`` epochs in all (counting those in a resumed checkpoint), evaluating
    after each; writes out_dir/{checkpoint.npz, log.csv, curves.png, conv1_filters.png}.

    Returns the history, one row per epoch (``lr`` is the rate that epoch trained with,
    ``skipped_steps`` the steps skipped for a non-finite loss). With nothing left to train
    (``epochs`` at most the checkpoint's) nothing is written. A non-finite loss or gradient
    stops the run (NonFiniteLossError) with the last checkpoint untouched, unless
    nonfinite="skip". ``resume_lr`` replaces the checkpoint's learning rate.

    ``precision``: "fp32", "tf32", "fp16" or a ``Precision`` (None, the default: the model's own
    dtype and the TF32 setting as they are). Cast the model with ``Precision(mode).cast_model``
    before building the optimizer, which then keeps float32 master weights. fp16 scales the loss
    with ``scaler`` (a new ``GradScaler()`` when None); its scale and skipped steps go to the log
    (``loss_scale``, ``scaler_skipped_steps``) and its state to the checkpoint. tf32 runs the
    epochs inside ``matmul_mode()``."""
    if nonfinite not in NONFINITE:
        raise ValueError(f"fit: nonfinite must be one of {NONFINITE}, got {nonfinite!r}")
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if precision is not None and not isinstance(precision, mdl_precision.Precision):
        precision = mdl_precision.Precision(precision)
    dtypes = {str(p.dtype) for p in model.parameters()}
    wrong = sorted(dtypes - {str(precision.dtype)}) if precision is not None else []
    if wrong:
        raise ValueError(
            f"fit: precision {precision.name} trains {precision.dtype} parameters, the model "
            f"has {wrong}: cast it with Precision({precision.name!r}).cast_model(model) before "
            "building the optimizer (which then keeps float32 master weights)"
        )
    if scaler is None and precision is not None and precision.loss_scaling:
        scaler = mdl_precision.GradScaler()
    if scaler is not None and not scaler.enabled:
        scaler = None
    history: list[dict] = []
    start_epoch = 0
    # several processes (minidl.distributed): rank 0 alone prints and writes files
    out = Path(out_dir) if out_dir is not None and distributed.is_main() else None
    log = log if distributed.is_main() else (lambda *args: None)
    checkpoint = out / "checkpoint.npz" if out is not None else None
    if resume is not None:
        start_epoch, history = load_checkpoint(
            resume, model, optimizer, scheduler, train_loader, lr=resume_lr, log=log, scaler=scaler
        )
        log(f"resumed from {resume} after epoch {start_epoch}")
    distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
    if epochs <= start_epoch:
        log(f"nothing to train: {epochs} epochs asked for, {start_epoch} done; nothing written")
        return history
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    told_no_curves, skipped_in_all = False, 0
    # tf32: TF32 GEMMs while training, restored after; None leaves the setting as it is
    with precision.matmul_mode() if precision is not None else contextlib.nullcontext():
        for epoch in range(start_epoch + 1, epochs + 1):
            lr = optimizer.lr  # the rate this epoch trains with; the scheduler changes it after
            try:
                train = train_epoch(
                    model,
                    train_loader,
                    optimizer,
                    device,
                    progress,
                    f"epoch {epoch}",
                    nonfinite,
                    epoch,
                    precision,
                    scaler,
                )
            except NonFiniteLossError as err:
                kept = f"; {checkpoint} is as it was" if checkpoint and checkpoint.exists() else ""
                raise NonFiniteLossError(
                    f"training stopped: {err}. Nothing was written for epoch {epoch}{kept}",
                    err.epoch,
                    err.step,
                    err.loss,
                    history,
                ) from None
            distributed.broadcast_parameters(model)  # BatchNorm's running statistics: rank 0's
            test = evaluate(model, test_loader, device, precision=precision)
            if scheduler is not None:
                scheduler.step(test["top1"])
            row = {
                "epoch": epoch,
                "lr": lr,
                "train_loss": round(train["loss"], 6),
                "train_accuracy": round(train["accuracy"], 6),
                "test_loss": round(test["loss"], 6),
                "test_top1": round(test["top1"], 6),
                "test_top5": round(test["top5"], 6),
                "images_per_second": round(train["images_per_second"], 1),
                "seconds": round(train["seconds"], 1),
                "skipped_steps": train["skipped_steps"],
            }
            if scaler is not None:  # loss scaling: the scale after the epoch, the steps it skipped
                row["loss_scale"] = train["loss_scale"]
                row["scaler_skipped_steps"] = train["scaler_skipped_steps"]
            history.append(row)
            skipped_in_all += row["skipped_steps"]
            skipped = (
                f", {row['skipped_steps']} steps skipped (non-finite)"
                if row["skipped_steps"]
                else ""
            )
            if scaler is not None:
                by_scaler = row["scaler_skipped_steps"]
                skipped += f", loss scale {row['loss_scale']:g}" + (
                    f" ({by_scaler} steps skipped by loss scaling)" if by_scaler else ""
                )
            log(
                f"epoch {epoch}: train loss {row['train_loss']:.4f} acc "
                f"{row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} top-1 "
                f"{row['test_top1']:.4f} top-5 {row['test_top5']:.4f} | "
                f"{row['images_per_second']:.0f} img/s, {row['seconds']:.0f} s{skipped}"
            )
            if out is not None:
                save_checkpoint(
                    checkpoint,
                    model,
                    optimizer,
                    scheduler,
                    train_loader,
                    epoch,
                    history,
                    scaler=scaler,
                )
                write_csv(out / "log.csv", history)
                if not plot_curves(history, out / "curves.png") and not told_no_curves:
                    log(
                        "curves.png not written: matplotlib is missing (pip install 'minidl[plot]')"
                    )
                    told_no_curves = True
    if skipped_in_all:
        log(f"{skipped_in_all} steps were skipped for a non-finite loss or gradient")
    if out is not None:
        first_conv = next(p for name, p in model.named_parameters() if p.ndim == 4)
        save_filter_grid(first_conv.numpy(), out / "conv1_filters.png")
    return history
