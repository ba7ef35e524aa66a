"""The ranks' side of tests/test_distributed.py: ``mpiexec -n 2 python tests/distributed_worker.py
SCENARIO OUT_DIR``. Rank 0 gathers what the test checks and writes it to OUT_DIR/result.npz;
the same functions run in the test's own process (a world of one) for the references.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

import minidl as mdl
from minidl import data, distributed, nn, optim, precision, train

DEVICE = os.environ.get("DISTRIBUTED_WORKER_DEVICE", "cpu")  # "cuda": one GPU per rank, NCCL
STEPS_EPOCHS = 2  # 29 samples in batches of 8: 4 steps an epoch, the last on 5 samples (3 + 2)


def small_net(dropout: bool = False, batchnorm: bool = False) -> nn.Module:
    """A float64 convnet; with ``dropout``, a Dropout(0.5) before the linear layer; with
    ``batchnorm``, BatchNorm2d after the conv and a hidden layer with BatchNorm1d."""
    mdl.manual_seed(0)
    if batchnorm:
        net = nn.Sequential(
            nn.Conv2d(1, 3, 3),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 6 * 6, 6),
            nn.BatchNorm1d(6),
            nn.ReLU(),
            nn.Linear(6, 4),
        )
        return net.double()
    net = nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.ReLU(),
        nn.Flatten(),
        *([nn.Dropout(0.5)] if dropout else []),
        nn.Linear(3 * 6 * 6, 4),
    )
    return net.double()


def small_data(n: int = 29) -> data.ArrayDataset:
    rng = np.random.default_rng(1)
    images = rng.standard_normal((n, 1, 8, 8))
    return data.ArrayDataset(images, rng.integers(0, 4, n), lambda x, rng: x.astype(np.float64))


def train_steps(mode: str | None = None, dropout: bool = False, batchnorm: bool = False) -> dict:
    """STEPS_EPOCHS epochs of train_epoch (global batch 8, shuffled), from rank 0's weights;
    ``mode`` "bf16": the net cast to bfloat16 (float32 master weights) before the optimizer."""
    model = small_net(dropout, batchnorm).to(DEVICE)
    cast = precision.Precision(mode) if mode is not None else None
    if cast is not None:
        cast.cast_model(model.float())
    if distributed.rank() != 0:  # start from other weights: broadcast_parameters must fix them
        for p in model.parameters():
            p.data = (p.data + 1.0).astype(p.dtype)  # (NumPy widens bfloat16 + 1.0)
    distributed.broadcast_parameters(model)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loader = data.DataLoader(small_data(), 8, shuffle=True, seed=3, workers=0)
    metrics = [
        train.train_epoch(model, loader, optimizer, DEVICE, progress=False, precision=cast)
        for _ in range(STEPS_EPOCHS)
    ]
    # float32 holds bfloat16 exactly, and .npz has no bfloat16
    result = {f"param/{k}": v.astype(np.float64) for k, v in model.state_dict().items()}
    if mode is not None:
        result["dtype"] = np.array([str(p.dtype) for p in model.parameters()])
    result["loss"] = np.array([m["loss"] for m in metrics])
    result["accuracy"] = np.array([m["accuracy"] for m in metrics])
    return result


class IndexDataset:
    """Batches that are their own indices: what a rank reads, as it reads it."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, indices, rng):
        return np.asarray(indices), np.asarray(indices)


def shards(n: int = 37, batch_size: int = 8, epochs: int = 2) -> list[list[list[int]]]:
    """Each epoch's batches as this rank iterates them (indices)."""
    loader = data.DataLoader(IndexDataset(n), batch_size, shuffle=True, seed=5, workers=1)
    return [[x.tolist() for x, _ in loader] for _ in range(epochs)]


def fit_runs(out: Path) -> dict:
    """fit() for 2 epochs straight, and 1 epoch then resumed to 2, each rank into its own
    out_dir (only rank 0's may appear)."""

    def run(epochs, out_dir, resume=None):
        model = small_net()
        optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        train_loader = data.DataLoader(small_data(), 8, shuffle=True, seed=3, workers=0)
        test_loader = data.DataLoader(small_data(12), 6, workers=0)
        history = train.fit(
            model,
            train_loader,
            test_loader,
            optimizer,
            epochs,
            out_dir=out_dir,
            resume=resume,
            progress=False,
        )
        return model, history

    rank = distributed.rank()
    straight, history = run(2, out / f"straight/rank{rank}")
    run(1, out / f"first/rank{rank}")
    distributed.barrier()  # rank 0 has written the checkpoint every rank resumes from
    resumed, _ = run(2, out / f"resumed/rank{rank}", resume=out / "first/rank0/checkpoint.npz")
    result = {f"straight/{k}": v for k, v in straight.state_dict().items()}
    result.update({f"resumed/{k}": v for k, v in resumed.state_dict().items()})
    result["test_top1"] = np.array([row["test_top1"] for row in history])
    result["test_loss"] = np.array([row["test_loss"] for row in history])
    return result


def rank0_cannot_write(out: Path, what: str) -> dict:
    """fit() where rank 0 cannot take the run's lock (another live process holds it) or cannot
    write the checkpoint (a file-size limit): every rank must stop with rank 0's error, none
    may wait for rank 0 in an all-reduce. Returns each rank's error message."""
    folder, savez = out / what, np.savez

    def too_large(*args, **kwargs):
        raise OSError(27, "File too large")

    if distributed.is_main():
        folder.mkdir(parents=True)
        if what == "lock":
            (folder / "run.lock").write_text(f"{os.getppid()}\n")  # mpiexec's proxy: alive
        else:
            np.savez = too_large
    distributed.barrier()
    model = small_net()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    train_loader = data.DataLoader(small_data(), 8, shuffle=True, seed=3, workers=0)
    test_loader = data.DataLoader(small_data(12), 6, workers=0)
    try:
        train.fit(model, train_loader, test_loader, optimizer, 2, out_dir=folder, progress=False)
    except train.CheckpointError as err:
        return {"error": np.array(str(err))}
    finally:
        np.savez = savez
    return {"error": np.array("")}


def fit_batchnorm() -> dict:
    """One epoch of fit() with BatchNorm: each rank updates the running statistics from its own
    shard, and fit makes them rank 0's before evaluating."""
    mdl.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(108, 4))
    model.double()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    train_loader = data.DataLoader(small_data(), 8, shuffle=True, seed=3, workers=0)
    test_loader = data.DataLoader(small_data(12), 6, workers=0)
    train.fit(model, train_loader, test_loader, optimizer, 1, progress=False)
    return {f"state/{k}": v for k, v in model.state_dict().items()}


def broadcast() -> dict:
    """Parameters and buffers that differ by rank, made equal to rank 0's."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    for i, p in enumerate(model.parameters()):
        p.data = np.full(p.shape, 10.0 * distributed.rank() + i, dtype=p.dtype)
    bn = model[1]
    bn.running_mean.data[...] = 100.0 + distributed.rank()
    bn.num_batches_tracked.data[...] = 7 + distributed.rank()  # a 0-d int64 buffer
    distributed.broadcast_parameters(model)
    return {f"state/{k}": v for k, v in model.state_dict().items()}


def planted_failure() -> None:
    """Rank 1 raises after one step while rank 0 goes on into the next all-reduce."""
    model = small_net()
    optimizer = optim.SGD(model.parameters(), lr=0.1)
    loader = data.DataLoader(small_data(), 8, workers=0)
    for step, (x, y) in enumerate(loader):
        if step == 1 and distributed.rank() == 1:
            raise RuntimeError("planted failure on rank 1")
        loss = mdl.functional.cross_entropy(model(mdl.tensor(x)), y)
        optimizer.zero_grad()
        loss.backward()
        distributed.allreduce_gradients(model)
        optimizer.step()
    distributed.allreduce_sum([0.0])  # rank 0 waits here for ever if nothing ends the job


def gather(result: dict) -> dict:
    """Every rank's result, on rank 0, keyed "rank{r}/..."."""
    if distributed.world_size() == 1:
        return {f"rank0/{k}": v for k, v in result.items()}
    everything = distributed.comm().gather(result, root=0)
    if everything is None:
        return {}
    return {f"rank{r}/{k}": v for r, part in enumerate(everything) for k, v in part.items()}


def main(scenario: str, out: Path) -> None:
    distributed.init(DEVICE)
    if scenario == "steps":
        result = train_steps()
    elif scenario == "steps_bf16":
        result = train_steps("bf16")
    elif scenario == "steps_dropout":
        result = train_steps(dropout=True)
    elif scenario == "steps_batchnorm":
        result = train_steps(batchnorm=True)
    elif scenario == "shards":
        epochs = shards()
        result = {
            f"epoch{e}/batch{b}": np.array(x)
            for e, bs in enumerate(epochs)
            for b, x in enumerate(bs)
        }
    elif scenario == "fit":
        result = fit_runs(out)
    elif scenario == "fit_batchnorm":
        result = fit_batchnorm()
    elif scenario in ("cannot_lock", "cannot_save"):
        result = rank0_cannot_write(out, scenario.split("_")[1])
    elif scenario == "broadcast":
        result = broadcast()
    elif scenario == "fail":
        planted_failure()
        result = {}
    elif scenario == "mismatch":  # rank 1 builds a wider layer than rank 0
        model = nn.Sequential(nn.Linear(4, 3 + distributed.rank()))
        distributed.broadcast_parameters(model)
        result = {}
    elif scenario == "batch1":  # a global batch of 1 cannot give each of 2 ranks a sample
        data.DataLoader(small_data(), 1)
        result = {}
    else:
        raise ValueError(f"distributed_worker: unknown scenario {scenario!r}")
    gathered = gather(result)
    if distributed.is_main():
        np.savez(out / "result.npz", **gathered)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
