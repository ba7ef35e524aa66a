"""Training utilities: an epoch loop, evaluation (top-1/top-5, optional ten-crop), ``fit`` and a
CSV log. Checkpoints that resume exactly are ``minidl/checkpoint.py`` (``docs/checkpoints.md``);
the pictures (curves, conv1's filters) are ``minidl/plots.py``.

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
import math
import time
from pathlib import Path

import numpy as np

import minidl.functional as F
from minidl import backend, distributed
from minidl import precision as mdl_precision
from minidl import random as mdl_random
from minidl.autograd import no_grad
from minidl.checkpoint import (  # noqa: F401 - save/load/read are also train's public names
    CheckpointError,
    checkpoint_summary,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from minidl.plots import plot_curves, save_filter_grid
from minidl.tensor import Tensor

NONFINITE = ("stop", "skip")


class NonFiniteLossError(RuntimeError):
    """Training stopped at a step whose loss or gradients were not finite (nonfinite="stop").

    That step's update was not applied and nothing was written after it. ``epoch`` and ``step``
    (1-based) say where, ``loss`` is the loss value, ``history`` the epochs finished before."""

    def __init__(self, message: str, epoch, step: int, loss: float, history=None):
        super().__init__(message)
        self.epoch, self.step, self.loss = epoch, step, loss
        self.history = history if history is not None else []


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
    # where each of this rank's batches starts in the global batch (data parallel): dropout
    # counts its elements from there, so N ranks draw one process's masks
    sharded = getattr(loader, "world_size", 1) > 1 and hasattr(loader, "shard_starts")
    starts = loader.shard_starts(loader.epoch) if sharded else []
    bar = _progress(loader, len(loader), desc, progress)
    for step, (x, y) in enumerate(bar, start=1):
        x = Tensor(x, device=device)
        if precision is not None:
            x = precision.cast_input(x)
        with mdl_random.batch_shard(starts[step - 1] if step <= len(starts) else 0):
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
