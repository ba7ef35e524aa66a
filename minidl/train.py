"""Training utilities: an epoch loop, evaluation (top-1/top-5, optional ten-crop), checkpoints
that resume exactly and a CSV log; the pictures (curves, conv1's filters) are ``minidl/plots.py``.

Checkpoints are ``.npz`` files read with ``allow_pickle=False``: the model's and optimizer's arrays,
the schedule's numbers, the loader's epoch and the global generator's state (as JSON text), so a
run resumed from one continues with the same batches, dropout masks and updates.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

import minidl.functional as F
from minidl import backend, distributed
from minidl import random as mdl_random
from minidl.autograd import no_grad
from minidl.plots import plot_curves, save_filter_grid
from minidl.tensor import Tensor


def _progress(iterable, total: int, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def train_epoch(
    model, loader, optimizer, device: str = "cpu", progress: bool = True, desc: str = "train"
) -> dict:
    """One pass over ``loader``; returns mean loss, accuracy, images/second and seconds."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    progress = progress and distributed.is_main()
    start = time.perf_counter()
    bar = _progress(loader, len(loader), desc, progress)
    for x, y in bar:
        x = Tensor(x, device=device)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        distributed.allreduce_gradients(optimizer.params, weight=len(y))  # no-op in one process
        optimizer.step()
        batch_loss = loss.item()  # also waits for the GPU, so the rate below is honest
        total_loss += batch_loss * len(y)
        correct += int((backend.to_numpy(logits.data).argmax(axis=1) == y).sum())
        seen += len(y)
        if progress:
            rate = seen / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{batch_loss:.4f}", img_s=f"{rate:.0f}")
    seconds = time.perf_counter() - start
    total_loss, correct, seen = distributed.allreduce_sum([total_loss, correct, seen])  # all ranks
    return {
        "loss": total_loss / seen,
        "accuracy": correct / seen,
        "images_per_second": seen / seconds,
        "seconds": seconds,
    }


def topk_correct(scores: np.ndarray, y: np.ndarray, k: int) -> int:
    """How many rows have their label among the k highest scores."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return int((top == y[:, None]).any(axis=1).sum())


def evaluate(model, loader, device: str = "cpu", progress: bool = False) -> dict:
    """Mean loss, top-1 and top-5 accuracy. Batches of shape (B, 10, C, H, W) are ten-crop
    batches: the softmax is averaged over each image's ten crops (the paper's test procedure)."""
    model.eval()
    total_loss, top1, top5, seen = 0.0, 0, 0, 0
    with no_grad():
        for x, y in _progress(loader, len(loader), "eval", progress):
            crops = 1
            if x.ndim == 5:
                crops = x.shape[1]
                x = x.reshape(-1, *x.shape[2:])
            logits = model(Tensor(x, device=device))
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
    path, model, optimizer=None, scheduler=None, loader=None, epoch: int = 0, history=None
) -> None:
    arrays = {f"model/{k}": v for k, v in model.state_dict().items()}
    if optimizer is not None:
        arrays.update({f"optimizer/{k}": v for k, v in optimizer.state_dict().items()})
    if scheduler is not None:
        arrays.update({f"scheduler/{k}": v for k, v in scheduler.state_dict().items()})
    arrays["epoch"] = np.array(epoch)
    arrays["loader_epoch"] = np.array(loader.epoch if loader is not None else epoch)
    arrays["rng"] = np.array(json.dumps(mdl_random.generator().bit_generator.state))
    arrays["history"] = np.array(json.dumps(history or []))
    arrays["world_size"] = np.array(distributed.world_size())  # resume needs as many ranks
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def load_checkpoint(path, model, optimizer=None, scheduler=None, loader=None) -> tuple[int, list]:
    """Restore everything ``save_checkpoint`` wrote; returns (epoch, history)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    saved_world = int(data.get("world_size", 1))  # checkpoints from before it: one process
    if saved_world != distributed.world_size():
        raise ValueError(
            f"checkpoint {path} was written by a run on {saved_world} process(es); resume it on "
            f"the same number (this run has {distributed.world_size()}): the loader's shards, "
            "and so the batches each rank reads, depend on it"
        )

    def section(name):
        prefix = f"{name}/"
        return {k[len(prefix) :]: v for k, v in data.items() if k.startswith(prefix)}

    model.load_state_dict(section("model"))
    if optimizer is not None:
        optimizer.load_state_dict(section("optimizer"))
    if scheduler is not None:
        scheduler.load_state_dict(section("scheduler"))
    if loader is not None:
        loader.epoch = int(data["loader_epoch"])
    mdl_random.generator().bit_generator.state = json.loads(str(data["rng"]))
    return int(data["epoch"]), json.loads(str(data["history"]))


# ---- logs ---------------------------------------------------------------------------
def write_csv(path, history: list[dict]) -> None:
    if not history:
        return
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
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
) -> list[dict]:
    """Train for ``epochs`` epochs in all (counting those in a resumed checkpoint), evaluating
    after each; writes out_dir/{checkpoint.npz, log.csv, curves.png, conv1_filters.png}."""
    history: list[dict] = []
    start_epoch = 0
    # several processes (minidl.distributed): rank 0 alone prints and writes files
    out = Path(out_dir) if out_dir is not None and distributed.is_main() else None
    log = log if distributed.is_main() else (lambda *args: None)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        start_epoch, history = load_checkpoint(resume, model, optimizer, scheduler, train_loader)
        log(f"resumed from {resume} after epoch {start_epoch}")
    distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
    for epoch in range(start_epoch + 1, epochs + 1):
        train = train_epoch(model, train_loader, optimizer, device, progress, f"epoch {epoch}")
        distributed.broadcast_parameters(model)  # BatchNorm's running statistics: rank 0's
        test = evaluate(model, test_loader, device)
        if scheduler is not None:
            scheduler.step(test["top1"])
        row = {
            "epoch": epoch,
            "lr": optimizer.lr,
            "train_loss": round(train["loss"], 6),
            "train_accuracy": round(train["accuracy"], 6),
            "test_loss": round(test["loss"], 6),
            "test_top1": round(test["top1"], 6),
            "test_top5": round(test["top5"], 6),
            "images_per_second": round(train["images_per_second"], 1),
            "seconds": round(train["seconds"], 1),
        }
        history.append(row)
        log(
            f"epoch {epoch}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"test loss {row['test_loss']:.4f} top-1 {row['test_top1']:.4f} top-5 "
            f"{row['test_top5']:.4f} | {row['images_per_second']:.0f} img/s, {row['seconds']:.0f} s"
        )
        if out is not None:
            save_checkpoint(
                out / "checkpoint.npz", model, optimizer, scheduler, train_loader, epoch, history
            )
            write_csv(out / "log.csv", history)
            plot_curves(history, out / "curves.png")
    if out is not None:
        first_conv = next(p for name, p in model.named_parameters() if p.ndim == 4)
        save_filter_grid(first_conv.numpy(), out / "conv1_filters.png")
    return history
