"""Training: a step, an epoch and a run.

    train_step   forward, loss, zero_grad, backward, all-reduce, guard, step: one batch
    train_epoch  the steps over a loader, and the epoch's loss, accuracy and rate
    evaluate     mean loss, top-1 and top-5 (ten-crop batches averaged), no gradients
    fit          the epochs: resume, evaluation, the schedule, checkpoints and the logs

What a non-finite step does (stop or skip) and the optional loss scaler are one object,
``StepGuard`` (``minidl/guard.py``). Checkpoints that resume exactly are ``minidl/checkpoint.py``
(``docs/checkpoints.md``); the pictures (curves, conv1's filters) are ``minidl/plots.py``. A
precision mode (``minidl/precision.py``, ``docs/precision.md``) is chosen per run:
``fit(..., precision="fp16")``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

import minidl.functional as F
from minidl import backend, distributed
from minidl import precision as mdl_precision
from minidl.autograd import no_grad
from minidl.checkpoint import (  # noqa: F401 - save/load/read are also train's public names
    CheckpointError,
    checkpoint_summary,
    load_checkpoint,
    read_checkpoint,
    refuse_overwrite,
    run_lock,
    save_checkpoint,
)
from minidl.guard import (  # noqa: F401 - NONFINITE, all_finite: train's public names too
    NONFINITE,
    NonFiniteLossError,
    StepGuard,
    all_finite,
)
from minidl.nn.layers import Dropout
from minidl.plots import NO_CURVES, save_filter_grid, write_beside, write_run_files
from minidl.tensor import Tensor


def _batch_tensor(x, device: str) -> Tensor:
    """A batch from the loader as a tensor on ``device``, without a second copy on the CPU: the
    model only reads it (``Tensor(x)`` would copy, as ``torch.tensor`` does)."""
    return Tensor._wrap(backend.move(x, device), device, False)


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


# ---- a step --------------------------------------------------------------------------------------
class Step(NamedTuple):
    """What a step gives its epoch: the loss, the logits, and whether the guard skipped it."""

    loss: float
    logits: Tensor
    skipped: bool


def train_step(model, x: Tensor, y: np.ndarray, optimizer, guard: StepGuard) -> Step:
    """One optimizer step on the batch x: (N, ...), y: (N,) class indices.

    x is on the model's device and in its dtype. ``skipped``: the guard dropped this step (a
    non-finite loss or gradient under nonfinite="skip"; "stop" raises). A step whose update the
    loss scaler skipped is not ``skipped``: its forward pass counts in the epoch's figures."""
    logits = model(x)
    loss = F.cross_entropy(mdl_precision.Precision.loss_input(logits), y)  # of float32 logits
    optimizer.zero_grad()
    guard.backward(loss)  # with a loss scaler, of the scaled loss
    # several processes: every rank now holds the whole batch's gradient, so every rank's guard
    # takes the same decision (a non-finite gradient anywhere is one everywhere)
    distributed.allreduce_gradients(optimizer.params, weight=len(y))
    loss_value = loss.item()  # also waits for the GPU, so the epoch's rate is honest
    if not guard.check(loss_value, optimizer):  # "stop" raises; "skip" drops the step
        return Step(loss_value, logits, skipped=True)
    guard.step(optimizer)  # or the scaler's step; an update that overflows stops the run
    return Step(loss_value, logits, skipped=False)


# ---- an epoch ------------------------------------------------------------------------------------
def train_epoch(
    model,
    loader,
    optimizer,
    device: str = "cpu",
    progress: bool = True,
    guard: StepGuard | None = None,
    epoch: int | None = None,
    precision=None,
    desc: str | None = None,
) -> dict:
    """One pass over ``loader``; returns mean loss, accuracy, images/second, seconds and the
    guard's counts (``skipped_steps``; with a loss scaler ``loss_scale`` and
    ``scaler_skipped_steps``). Loss and accuracy count the steps the guard did not skip.

    ``guard``: a run's ``StepGuard`` (None: stop at a non-finite step, no loss scaler); an epoch
    in which every step was skipped stops either way. ``epoch`` numbers its messages and names
    the progress bar (else ``desc``, by default "train").
    ``precision`` (a ``Precision``; None is fp32): each batch is cast to its storage dtype; the
    model must already be cast."""
    guard = guard if guard is not None else StepGuard(caller="train_epoch")
    guard.begin_epoch(epoch, len(loader))
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    progress = progress and distributed.is_main()
    start = time.perf_counter()
    desc = desc or (f"epoch {epoch}" if epoch is not None else "train")
    bar = _progress(loader, len(loader), desc, progress)
    for batch in bar:
        x, y = batch
        x = _batch_tensor(x, device)
        x = precision.cast_input(x) if precision is not None else x
        # data parallel: dropout counts from where this rank's part of the global batch starts
        Dropout.place(model, getattr(batch, "first", 0))  # a plain (x, y) pair: one process
        step = train_step(model, x, y, optimizer, guard)
        if step.skipped:
            continue
        total_loss += step.loss * len(y)
        correct += int((backend.to_numpy(step.logits.data).argmax(axis=1) == y).sum())
        seen += len(y)
        if progress:
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{step.loss:.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    total_loss, correct, seen = distributed.allreduce_sum([total_loss, correct, seen])  # all ranks
    counts = guard.end_epoch(seen)  # stops an epoch that learnt nothing
    return {
        "loss": total_loss / seen,
        "accuracy": correct / seen,
        "images_per_second": seen / seconds,
        "seconds": seconds,
        **counts,
    }


# ---- evaluation ----------------------------------------------------------------------------------
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
            x = _batch_tensor(x, device)
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


# ---- logs ----------------------------------------------------------------------------------------
def _row(epoch: int, lr: float, train: dict, test: dict) -> dict:
    """An epoch's line of the history (and of log.csv)."""
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
    if "loss_scale" in train:  # loss scaling: the scale after the epoch, the steps it skipped
        row["loss_scale"] = train["loss_scale"]
        row["scaler_skipped_steps"] = train["scaler_skipped_steps"]
    return row


def _epoch_line(row: dict) -> str:
    """What fit prints after an epoch."""
    notes = f", {row['skipped_steps']} steps skipped (non-finite)" if row["skipped_steps"] else ""
    if "loss_scale" in row:
        by_scaler = row["scaler_skipped_steps"]
        notes += f", loss scale {row['loss_scale']:g}" + (
            f" ({by_scaler} steps skipped by loss scaling)" if by_scaler else ""
        )
    return (
        f"epoch {row['epoch']}: train loss {row['train_loss']:.4f} acc "
        f"{row['train_accuracy']:.4f} | test loss {row['test_loss']:.4f} top-1 "
        f"{row['test_top1']:.4f} top-5 {row['test_top5']:.4f} | "
        f"{row['images_per_second']:.0f} img/s, {row['seconds']:.0f} s{notes}"
    )


# ---- a run ---------------------------------------------------------------------------------------
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
    overwrite: bool = False,
) -> list[dict]:
    """Train for ``epochs`` epochs in all (counting those in a resumed checkpoint), evaluating
    after each; writes out_dir/{checkpoint.npz, log.csv, curves.png, conv1_filters.png}. Returns
    the history, one row per epoch (``lr``: the rate it trained with); with nothing left to
    train, nothing is written. A non-finite loss or gradient stops the run
    (NonFiniteLossError), the last checkpoint untouched, unless nonfinite="skip" (minidl/guard.py).
    ``resume_lr`` replaces the checkpoint's learning rate. ``optimizer`` and ``scheduler`` may be
    factories (``params -> optimizer``, ``optimizer -> schedule``), called after the model is cast
    to ``precision``; ``_setup`` says what ``precision`` and ``scaler`` do. A new run (no
    ``resume``) refuses an out_dir that holds a checkpoint unless ``overwrite``, and a run holds
    out_dir/run.lock while it writes there (``docs/checkpoints.md``)."""
    if epochs < 0:
        raise ValueError(f"fit: epochs must be >= 0, got {epochs}")
    if out_dir is not None:  # every rank: they all stop here, or none does
        refuse_overwrite(out_dir, resume, overwrite)
    optimizer, scheduler, precision, guard = _setup(
        model, optimizer, scheduler, precision, scaler, nonfinite
    )
    run = _Run(model, train_loader, test_loader, optimizer, scheduler, guard, precision, device)
    out = Path(out_dir) if out_dir is not None else None  # rank 0 alone writes there
    log = log if distributed.is_main() else (lambda *args: None)  # rank 0 alone writes, prints
    start_epoch, history = 0, []
    if resume is not None:
        start_epoch, history = load_checkpoint(
            resume, model, optimizer, scheduler, train_loader, resume_lr, log, guard.scaler
        )
        log(f"resumed from {resume} after epoch {start_epoch}")
    distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
    if epochs <= start_epoch:
        log(f"nothing to train: {epochs} epochs asked for, {start_epoch} done; nothing written")
        return history
    resumed_rows = len(history)
    with run_lock(out, log) if out is not None else contextlib.nullcontext():
        run.train(range(start_epoch + 1, epochs + 1), out, history, progress, log)
    skipped = sum(row["skipped_steps"] for row in history[resumed_rows:])
    if skipped:
        log(f"{skipped} steps were skipped for a non-finite loss or gradient")
    return history


def _setup(model, optimizer, scheduler, precision, scaler, nonfinite: str):
    """fit's optimizer, schedule, precision and guard.

    ``precision``: "fp32", "tf32", "fp16", "bf16" or a ``Precision`` (None: the model's own dtype
    and the TF32 setting as they are). The model's parameters must be in its storage dtype before
    the optimizer exists, which then keeps float32 master weights: given an optimizer factory,
    fit casts the model (``Precision.cast_model``) and then calls it; given an optimizer, it
    refuses a model not cast. fp16 scales the loss with ``scaler`` (a new ``GradScaler()`` when
    None); its scale and skipped steps go to the log (``loss_scale``, ``scaler_skipped_steps``)
    and its state to the checkpoint. tf32 runs the epochs inside ``matmul_mode()``."""
    if precision is not None and not isinstance(precision, mdl_precision.Precision):
        precision = mdl_precision.Precision(precision)
    if scaler is None and precision is not None and precision.loss_scaling:
        scaler = mdl_precision.GradScaler()
    guard = StepGuard(nonfinite, scaler, caller="fit")
    if callable(optimizer):  # a factory: the master copies are made from the cast weights
        if precision is not None:
            precision.cast_model(model)
        optimizer = optimizer(model.parameters())
    if callable(scheduler):
        scheduler = scheduler(optimizer)
    dtypes = {str(p.dtype) for p in model.parameters()}
    wrong = sorted(dtypes - {str(precision.dtype)}) if precision is not None else []
    if wrong:
        raise ValueError(
            f"fit: precision {precision.name} trains {precision.dtype} parameters, the model "
            f"has {wrong}: cast it with Precision({precision.name!r}).cast_model(model) before "
            "building the optimizer (which then keeps float32 master weights), or give fit an "
            "optimizer factory (params -> optimizer) and fit casts the model first"
        )
    return optimizer, scheduler, precision, guard


class _Run(NamedTuple):
    """What each of fit's epochs works with."""

    model: object
    train_loader: object
    test_loader: object
    optimizer: object
    scheduler: object
    guard: StepGuard
    precision: object  # a Precision, or None
    device: str

    def epoch(self, epoch: int, progress: bool) -> dict:
        """Train one epoch, evaluate, step the schedule; returns the epoch's history row."""
        lr = self.optimizer.lr  # the rate this epoch trains with; the scheduler changes it after
        train = train_epoch(
            self.model,
            self.train_loader,
            self.optimizer,
            self.device,
            progress,
            self.guard,
            epoch,
            self.precision,
        )
        distributed.broadcast_parameters(self.model)  # BatchNorm's running statistics: rank 0's
        test = evaluate(self.model, self.test_loader, self.device, precision=self.precision)
        if self.scheduler is not None:
            self.scheduler.step(test["top1"])
        return _row(epoch, lr, train, test)

    def train(self, epochs: range, out: Path | None, history: list[dict], progress, log) -> None:
        """The epochs, each row appended to ``history`` and, with ``out``, saved; then the
        paper's Figure 3 (conv1's filters), for a model that has a convolution."""
        try:
            with _matmul_mode(self.precision):
                for epoch in epochs:
                    history.append(self.epoch(epoch, progress))
                    log(_epoch_line(history[-1]))
                    for note in self.save(out, history) if out is not None else ():
                        if note != NO_CURVES or epoch == epochs[0]:  # that one is said once
                            log(note)
        except NonFiniteLossError as err:
            raise _stopped(err, out, history) from None
        weight = _first_conv_weight(self.model)
        if out is not None and weight is not None and distributed.is_main():
            note = write_beside(out / "conv1_filters.png", lambda p: save_filter_grid(weight, p))
            if note:
                log(note)

    def save(self, out: Path, history: list[dict]) -> list[str]:
        """checkpoint.npz (a failure ends the run, CheckpointError), then log.csv and curves.png
        (a failure is only said: the checkpoint holds the history they show). Returns what to
        say. Rank 0 alone writes, and every rank stops if it could not (distributed.agree)."""
        parts = (self.model, self.optimizer, self.scheduler, self.train_loader)
        epoch, error, notes = history[-1]["epoch"], None, []
        if distributed.is_main():
            try:
                save_checkpoint(out / "checkpoint.npz", *parts, epoch, history, self.guard.scaler)
                notes = write_run_files(out, history)
            except CheckpointError as err:
                error = err
        distributed.agree(error)
        return notes


def _first_conv_weight(model) -> np.ndarray | None:
    """The first 4-D parameter (a convolution's weight); None for a model without one."""
    weight = next((p for p in model.parameters() if p.ndim == 4), None)
    return weight.numpy() if weight is not None else None


def _stopped(err: NonFiniteLossError, out: Path | None, history: list[dict]):
    """The error that ends a run a step stopped: nothing was written for its epoch."""
    checkpoint = out / "checkpoint.npz" if out is not None else None
    kept = f"; {checkpoint} is as it was" if checkpoint and checkpoint.exists() else ""
    return NonFiniteLossError(
        f"training stopped: {err}. Nothing was written for epoch {err.epoch}{kept}",
        err.epoch,
        err.step,
        err.loss,
        history,
    )


def _matmul_mode(precision):
    """tf32: TF32 GEMMs while training, restored after; None leaves the setting as it is."""
    return precision.matmul_mode() if precision is not None else contextlib.nullcontext()
