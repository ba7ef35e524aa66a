"""The main job's network, minidl against PyTorch, in one process and one run.

    python benchmarks/small_alexnet.py --json small.json             # the training step
    python benchmarks/small_alexnet.py --threads 1,2,4               # the step at each count
    python benchmarks/small_alexnet.py --full --json job.json        # and the whole job
    python benchmarks/small_alexnet.py --threads 1,2 --breakdown     # our step, op by op

The main job is the README's (examples/train_fashion_mnist.py): SmallAlexNet (LRN, two groups,
dropout 0.3, He init) on Fashion-MNIST's 28x28 images, batch 128, Adam lr 2e-3 halved each epoch,
3 epochs. PyTorch runs the same network (``minidl.testing.torch_twin``: the same layers and
weights) and the same recipe.

The step: forward, cross-entropy, backward and Adam on a fixed batch, each framework's steps in
rounds that alternate between the two (so a change of load on the machine hits both), medians
over the rounds, ``ratio`` = our images/s over PyTorch's (> 1: we are faster). With ``--threads``,
both frameworks are set to each count in turn (``minidl.set_num_threads``,
``torch.set_num_threads``).

``--breakdown``: where our step's time goes at each thread count, the wall time of each op's
forward and backward (each autograd Function's, summed over a step) and of the optimizer.

``--full``: the whole job for each framework in turn, the same data order, epochs, batch and
learning rates (a plain loop, no checkpoints or pictures): wall time and test accuracy.
``--limit`` (images of each set) and ``--epochs`` make it small. Without PyTorch only our side
is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import minidl as mdl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl import data, optim  # noqa: E402
from minidl.models.alexnet import SmallAlexNet  # noqa: E402
from minidl.testing import torch_twin  # noqa: E402

LR = 2e-3  # the main job's Adam learning rate, halved after each epoch


def small_alexnet(seed: int = 0) -> SmallAlexNet:
    mdl.manual_seed(seed)
    return SmallAlexNet(num_classes=10, in_channels=1, init="kaiming", dropout=0.3, norm="lrn")


class Ours:
    name = "minidl"

    def __init__(self, seed: int = 0):
        self.model = small_alexnet(seed)
        self.opt = optim.Adam(self.model.parameters(), lr=LR)

    def set_threads(self, n: int) -> None:
        mdl.set_num_threads(n)

    def set_lr(self, lr: float) -> None:
        self.opt.lr = lr

    def step(self, x: np.ndarray, target: np.ndarray) -> float:
        self.model.train()
        loss = F.cross_entropy(self.model(mdl.from_numpy(x)), target)
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return float(loss.numpy())

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with mdl.no_grad():
            return self.model(mdl.from_numpy(x)).numpy().argmax(axis=1)


class Theirs:
    name = "pytorch"

    def __init__(self, torch, seed: int = 0):
        self.torch = torch
        self.model = torch_twin(small_alexnet(seed))  # the same layers and starting weights
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)

    def set_threads(self, n: int) -> None:
        self.torch.set_num_threads(n)

    def set_lr(self, lr: float) -> None:
        for group in self.opt.param_groups:
            group["lr"] = lr

    def step(self, x: np.ndarray, target: np.ndarray) -> float:
        torch = self.torch
        self.model.train()
        logits = self.model(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(target))
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(x)).argmax(dim=1).numpy()


# ---- the training step ---------------------------------------------------------------------------
def bench_step(frameworks: list, batch: int, warmup: int, rounds: int, steps: int) -> dict:
    """Images per second of each framework's step, in alternating rounds of ``steps`` steps."""
    rng = np.random.default_rng(0)
    x = rng.random((batch, 1, 28, 28), dtype=np.float32)
    target = rng.integers(0, 10, batch)
    for fw in frameworks:
        for _ in range(warmup):
            fw.step(x, target)
    times = {fw.name: [] for fw in frameworks}
    for _ in range(rounds):
        for fw in frameworks:
            start = time.perf_counter()
            for _ in range(steps):
                fw.step(x, target)
            times[fw.name].append((time.perf_counter() - start) / steps)
    out = {}
    for name, seconds in times.items():
        median = statistics.median(seconds)
        out[name] = {"median_ms": 1000 * median, "images_per_second": batch / median}
    if "pytorch" in out:
        out["ratio"] = out["minidl"]["images_per_second"] / out["pytorch"]["images_per_second"]
    return out


# ---- where our step's time goes ------------------------------------------------------------------
def breakdown(batch: int, steps: int) -> dict:
    """Milliseconds a step in each autograd Function's forward and backward and in the optimizer,
    for our step (the Functions' static methods wrapped with a clock while it runs)."""
    from minidl.autograd import Function

    totals: dict[str, float] = {}

    def clocked(name, fn):
        def run(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] = totals.get(name, 0.0) + time.perf_counter() - start

        return run

    ours = Ours()
    ours.opt.step = clocked("optimizer step", ours.opt.step)
    classes, saved = list(Function.__subclasses__()), []
    while classes:
        cls = classes.pop()
        classes += cls.__subclasses__()
        for method in ("forward", "backward"):
            if isinstance(cls.__dict__.get(method), staticmethod):
                saved.append((cls, method, cls.__dict__[method]))
                fn = clocked(f"{cls.__name__} {method}", cls.__dict__[method].__func__)
                setattr(cls, method, staticmethod(fn))
    try:
        rng = np.random.default_rng(0)
        x, target = rng.random((batch, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, batch)
        ours.step(x, target)
        totals.clear()
        start = time.perf_counter()
        for _ in range(steps):
            ours.step(x, target)
        step = time.perf_counter() - start
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)
    out = {name: 1000 * t / steps for name, t in sorted(totals.items(), key=lambda kv: -kv[1])}
    out["outside the ops"] = 1000 * step / steps - sum(out.values())
    return {"step_ms": 1000 * step / steps, "ms": out}


# ---- the whole job -------------------------------------------------------------------------------
def run_job(fw, train_set, test_set, epochs: int, batch: int, seed: int) -> dict:
    """The main job's loop: shuffled batches (the same order for both frameworks), lr halved
    after each epoch, then the test accuracy."""
    start = time.perf_counter()
    images, labels = train_set
    for epoch in range(epochs):
        fw.set_lr(LR * 0.5**epoch)
        order = np.random.default_rng(seed + epoch).permutation(len(images))
        for first in range(0, len(order), batch):
            chosen = order[first : first + batch]
            fw.step(images[chosen], labels[chosen])
    seconds = time.perf_counter() - start
    test_images, test_labels = test_set
    right = sum(
        int((fw.predict(test_images[i : i + 500]) == test_labels[i : i + 500]).sum())
        for i in range(0, len(test_images), 500)
    )
    return {"train_seconds": seconds, "test_accuracy": right / len(test_images)}


def load(split: str, limit: int | None, root=None):
    dataset = data.fashion_mnist(split, root)
    images, labels = dataset.images, dataset.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    scaled = (images / np.float32(255.0)).astype(np.float32).reshape(-1, 1, 28, 28)
    return np.ascontiguousarray(scaled), labels.astype(np.int64)


# ---- report --------------------------------------------------------------------------------------
def print_step(threads: int, entry: dict) -> None:
    line = f"threads {threads}: minidl {entry['minidl']['images_per_second']:8.1f} img/s"
    if "pytorch" in entry:
        line += (
            f", pytorch {entry['pytorch']['images_per_second']:8.1f} img/s,"
            f" ratio {entry['ratio']:.2f}"
        )
    print(line)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=15, help="alternating rounds of timed steps")
    p.add_argument("--steps", type=int, default=1, help="steps per round (1 follows the load best)")
    p.add_argument(
        "--threads", default=None, help="comma-separated thread counts (default: minidl's)"
    )
    p.add_argument("--breakdown", action="store_true", help="our step op by op, each count")
    p.add_argument("--full", action="store_true", help="then the whole job for both")
    p.add_argument("--epochs", type=int, default=3, help="--full: epochs (the job's 3)")
    p.add_argument("--limit", type=int, default=None, help="--full: the first N images of each set")
    p.add_argument("--data", default=None, help="--full: folder with the Fashion-MNIST files")
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    counts = [int(t) for t in args.threads.split(",")] if args.threads else [mdl.get_num_threads()]
    results = {
        "batch": args.batch,
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
        "step": {},
    }
    for count in counts:
        frameworks = [Ours()] + ([Theirs(torch)] if torch is not None else [])
        for fw in frameworks:
            fw.set_threads(count)
        entry = bench_step(frameworks, args.batch, args.warmup, args.rounds, args.steps)
        results["step"][str(count)] = entry
        print_step(count, entry)
        if args.breakdown:
            entry["breakdown"] = breakdown(args.batch, args.rounds * args.steps)
            ops = entry["breakdown"]["ms"]
            print("  " + ", ".join(f"{name} {ms:.1f}" for name, ms in ops.items() if ms >= 0.5))
    if args.full:
        train_set, test_set = (load(split, args.limit, args.data) for split in ("train", "test"))
        results["job"] = {}
        for fw in [Ours()] + ([Theirs(torch)] if torch is not None else []):
            fw.set_threads(counts[-1])
            job = run_job(fw, train_set, test_set, args.epochs, args.batch, seed=0)
            results["job"][fw.name] = job
            print(
                f"whole job, {fw.name}: {job['train_seconds']:.1f} s training, "
                f"test accuracy {job['test_accuracy']:.4f}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
