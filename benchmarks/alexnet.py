"""AlexNet and its ops, minidl against PyTorch, in one process and one run.

    python benchmarks/alexnet.py --device cpu --batch 16 --json cpu.json
    python benchmarks/alexnet.py --device cpu --batch 16 --threads 1     # both on one core
    python benchmarks/alexnet.py --device cuda --batch 128 --json gpu.json      # TF32 off on both
    python benchmarks/alexnet.py --device cuda --batch 128 --precision fp16     # vs torch autocast

Precision (``--precision``, docs/precision.md), each side at the matching setting: fp32 (TF32 off
on both), tf32 (TF32 GEMMs on both; PyTorch's cuDNN convolutions too), fp16 (minidl: float16
model, float32 master weights and loss, GradScaler; PyTorch: autocast float16 + GradScaler), bf16
(minidl: bfloat16 model, float32 master weights and loss, no loss scaling; PyTorch: autocast
bfloat16). On the GPU the
training step is also timed with PyTorch's defaults (cuDNN TF32 on, matmul TF32 off, float32).
On the CPU only fp32 is measured.

For each framework: forward per batch and forward+backward per batch (the classic TensorFlow
AlexNet benchmark: burn-in steps, then mean +- std over timed steps), a full training step
(forward, backward, SGD with momentum and weight decay) in images/second, peak memory, and each
op alone at AlexNet's layer sizes. Every clock read waits for the GPU first. ``ratio`` is our
throughput over PyTorch's (> 1: we are faster), from the medians. Without PyTorch installed only
our side is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import minidl as mdl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl import backend, cuda, dtypes, optim, precision  # noqa: E402
from minidl.models.alexnet import AlexNet  # noqa: E402
from minidl.testing import torch_twin  # noqa: E402

# name: (kind, input shape without the batch, parameters)
OPS = {
    "conv1": ("conv", (3, 227, 227), dict(out=96, k=11, stride=4, padding=0, groups=1)),
    "conv2": ("conv", (96, 27, 27), dict(out=256, k=5, stride=1, padding=2, groups=2)),
    "conv3": ("conv", (256, 13, 13), dict(out=384, k=3, stride=1, padding=1, groups=1)),
    "conv4": ("conv", (384, 13, 13), dict(out=384, k=3, stride=1, padding=1, groups=2)),
    "conv5": ("conv", (384, 13, 13), dict(out=256, k=3, stride=1, padding=1, groups=2)),
    "relu1": ("relu", (96, 55, 55), {}),
    "lrn1": ("lrn", (96, 55, 55), {}),
    "lrn2": ("lrn", (256, 27, 27), {}),
    "pool1": ("pool", (96, 55, 55), {}),
    "pool2": ("pool", (256, 27, 27), {}),
    "pool5": ("pool", (256, 13, 13), {}),
    "dropout6": ("dropout", (9216,), {}),
    "dropout7": ("dropout", (4096,), {}),
    "fc6": ("linear", (9216,), dict(out=4096)),
    "fc7": ("linear", (4096,), dict(out=4096)),
    "fc8": ("linear", (4096,), dict(out=1000)),
}


# ---- timing --------------------------------------------------------------------------------------
def timed(fn, warmup: int, steps: int, sync) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return {
        "mean_ms": 1000 * statistics.mean(times),
        "std_ms": 1000 * (statistics.stdev(times) if len(times) > 1 else 0.0),
        "median_ms": 1000 * statistics.median(times),
    }


def compare(ours: dict, theirs: dict | None) -> dict:
    out = {"ours": ours, "theirs": theirs}
    out["ratio"] = theirs["median_ms"] / ours["median_ms"] if theirs else None
    return out


# ---- the two frameworks --------------------------------------------------------------------------
class Framework:
    """What both sides share: the same calls for a backward pass and for clearing gradients,
    and the precision hooks (autocast region, loss scaling) that are no-ops at fp32."""

    scaler = None  # a GradScaler where the precision scales the loss (fp16)

    def backward(self, y, dy):
        y.backward(dy)

    def autocast(self):
        return contextlib.nullcontext()

    def scale(self, loss):
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def step(self, loss, opt):
        """Backward of the (scaled) loss and the optimizer step (skipped on inf/NaN, fp16)."""
        self.scale(loss).backward()
        if self.scaler is None:
            opt.step()
            return
        self.scaler.step(opt)
        self.scaler.update()

    def zero(self, tensors):
        for t in tensors:
            t.grad = None


class Ours(Framework):
    name = "minidl"

    def __init__(self, device: str, mode: str = "fp32"):
        self.device, self.precision = device, precision.Precision(mode)
        if device == "cuda":
            precision.set_tf32(self.precision.tf32)
        self.scaler = precision.GradScaler() if self.precision.loss_scaling else None

    def sync(self):
        if self.device == "cuda":
            cuda.synchronize()

    def tensor(self, array, requires_grad=False):
        dtype = self.precision.dtype if dtypes.kind(array.dtype) == "f" else None
        return mdl.tensor(array, requires_grad=requires_grad, dtype=dtype, device=self.device)

    def model(self, seed=0):
        mdl.manual_seed(seed)
        return self.precision.cast_model(AlexNet(num_classes=1000).to(self.device))

    def sgd(self, model):
        return optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def loss(self, logits, target):
        return F.cross_entropy(precision.Precision.loss_input(logits), target)  # float32

    def no_grad(self):
        return mdl.no_grad()

    def op(self, kind, params):
        if kind == "conv":
            return lambda x, w, b: F.conv2d(
                x, w, b, params["stride"], params["padding"], 1, params["groups"]
            )
        if kind == "linear":
            return F.linear
        return {
            "relu": F.relu,
            "lrn": lambda x: F.local_response_norm(x, 5, 1e-4, 0.75, 2.0),
            "pool": lambda x: F.max_pool2d(x, 3, 2),
            "dropout": lambda x: F.dropout(x, 0.5),
        }[kind]


class Theirs(Framework):
    name = "pytorch"

    def __init__(self, torch, device: str, mode: str = "fp32"):
        """mode: fp32, tf32, fp16, bf16 (autocast), or "defaults" (PyTorch's own settings)."""
        self.torch, self.device, self.mode = torch, device, mode
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mode)
        if device == "cuda":
            if mode == "defaults":  # PyTorch's: TF32 for cuDNN convolutions, not for matmuls
                torch.backends.cuda.matmul.allow_tf32 = False
                torch.backends.cudnn.allow_tf32 = True
            else:
                torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
                torch.backends.cudnn.allow_tf32 = mode == "tf32"
            torch.backends.cudnn.benchmark = True
        if mode == "fp16":
            self.scaler = torch.amp.GradScaler(device)

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device, dtype=self.dtype)

    def sync(self):
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, array, requires_grad=False):
        t = self.torch.tensor(array, device=self.device)
        if self.dtype is not None and t.is_floating_point():  # 16-bit inputs, as ours
            t = t.to(self.dtype)
        return t.requires_grad_(requires_grad)

    def model(self, seed=0):
        """Our AlexNet's twin (minidl.testing.torch_twin): the same layers and weights."""
        mdl.manual_seed(seed)
        return torch_twin(AlexNet(num_classes=1000)).to(self.device)

    def sgd(self, model):
        return self.torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def loss(self, logits, target):
        return self.torch.nn.functional.cross_entropy(logits, target)

    def no_grad(self):
        return self.torch.no_grad()

    def op(self, kind, params):
        tf = self.torch.nn.functional
        if kind == "conv":
            return lambda x, w, b: tf.conv2d(
                x, w, b, params["stride"], params["padding"], 1, params["groups"]
            )
        if kind == "linear":
            return tf.linear
        return {
            "relu": tf.relu,
            "lrn": lambda x: tf.local_response_norm(x, 5, 5e-4, 0.75, 2.0),
            "pool": lambda x: tf.max_pool2d(x, 3, 2),
            "dropout": lambda x: tf.dropout(x, 0.5),
        }[kind]


# ---- what is timed -------------------------------------------------------------------------------
def training_setup(fw, batch: int):
    """AlexNet, its SGD, a batch and a training-step function, for one framework."""
    rng = np.random.default_rng(0)
    x = fw.tensor(rng.standard_normal((batch, 3, 227, 227)).astype(np.float32))
    target_np = rng.integers(0, 1000, batch)
    target = target_np if fw.name == "minidl" else fw.torch.tensor(target_np, device=fw.device)
    model = fw.model()
    opt = fw.sgd(model)

    def train_step():
        with fw.autocast():
            loss = fw.loss(model(x), target)
        opt.zero_grad()
        fw.step(loss, opt)

    return model, opt, x, target, train_step


def bench_model(fw, batch: int, warmup: int, steps: int) -> dict:
    model, opt, x, target, train_step = training_setup(fw, batch)

    def forward():
        with fw.no_grad(), fw.autocast():
            model(x)

    def forward_backward():
        with fw.autocast():
            loss = fw.loss(model(x), target)
        fw.scale(loss).backward()
        opt.zero_grad()

    model.eval()
    result = {"forward": timed(forward, warmup, steps, fw.sync)}
    model.train()
    result["forward_backward"] = timed(forward_backward, warmup, steps, fw.sync)
    result["train_step"] = timed(train_step, warmup, steps, fw.sync)
    result["train_step"]["images_per_second"] = batch / (result["train_step"]["median_ms"] / 1000)
    return result


def bench_op(fw, name: str, batch: int, warmup: int, steps: int) -> dict:
    kind, shape, params = OPS[name]
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((batch, *shape)).astype(np.float32)
    inputs = [fw.tensor(x_np, requires_grad=name != "conv1")]  # conv1's input needs no gradient
    if kind == "conv":
        w = rng.standard_normal(
            (params["out"], shape[0] // params["groups"], params["k"], params["k"])
        )
        inputs += [
            fw.tensor(w.astype(np.float32) * 0.01, True),
            fw.tensor(np.zeros(params["out"], np.float32), True),
        ]
    if kind == "linear":
        w = rng.standard_normal((params["out"], shape[0])).astype(np.float32) * 0.01
        inputs += [fw.tensor(w, True), fw.tensor(np.zeros(params["out"], np.float32), True)]
    fn = fw.op(kind, params)
    with fw.no_grad():
        out_shape = tuple(fn(*inputs).shape)
    dy = fw.tensor(rng.standard_normal(out_shape).astype(np.float32))

    def forward():
        with fw.no_grad():
            fn(*inputs)

    def forward_backward():
        fw.backward(fn(*inputs), dy)
        fw.zero(inputs)

    return {
        "forward": timed(forward, warmup, steps, fw.sync),
        "forward_backward": timed(forward_backward, warmup, steps, fw.sync),
    }


def _peak_memory_child(framework: str, device: str, batch: int, queue) -> None:
    """In a fresh process: build the model, run two training steps, report the peak RSS."""
    try:
        import torch  # imported in both children when it is there, so both carry its weight
    except ImportError:
        torch = None
    fw = Ours(device) if framework == "minidl" else Theirs(torch, device)
    train_step = training_setup(fw, batch)[-1]
    for _ in range(2):
        train_step()
    fw.sync()
    queue.put(peak_rss_mb())


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's ``ru_maxrss`` survives exec, so a spawned
    child would report its parent's peak when that is higher: read VmHWM (the peak of this
    process's own address space) where there is one."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024  # bytes on macOS, kB elsewhere
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale


def peak_memory(device: str, batch: int, have_torch: bool) -> dict:
    if device == "cuda":
        return {}  # filled in by the GPU pools in main()
    out = {"how": "peak RSS of a fresh process (interpreter, NumPy, torch, model, 2 steps), MB"}
    context = multiprocessing.get_context("spawn")
    for framework in ("minidl", "pytorch") if have_torch else ("minidl",):
        queue = context.Queue()
        child = context.Process(target=_peak_memory_child, args=(framework, device, batch, queue))
        child.start()
        child.join()
        out["ours_mb" if framework == "minidl" else "theirs_mb"] = (
            queue.get() if child.exitcode == 0 else None
        )
    return out


# ---- report --------------------------------------------------------------------------------------
def table(results: dict) -> str:
    lines = [f"{'what':<28}{'minidl ms':>12}{'pytorch ms':>12}{'ratio':>8}"]

    def row(label, entry):
        ours, theirs = entry["ours"], entry["theirs"]
        t = f"{theirs['median_ms']:>12.2f}" if theirs else f"{'-':>12}"
        r = f"{entry['ratio']:>8.2f}" if entry["ratio"] else f"{'-':>8}"
        lines.append(f"{label:<28}{ours['median_ms']:>12.2f}{t}{r}")

    for key, entry in results.get("alexnet", {}).items():
        row(f"alexnet {key}", entry)
    for name, entry in results.get("ops", {}).items():
        row(f"{name} forward", entry["forward"])
        row(f"{name} forward+backward", entry["forward_backward"])
    if results.get("train_step_ratio"):
        step = results["alexnet"]["train_step"]
        lines.append(
            f"training step: minidl {step['ours']['images_per_second']:.1f} img/s, pytorch "
            f"{step['theirs']['images_per_second']:.1f} img/s, "
            f"ratio {results['train_step_ratio']:.2f}"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--ops", default="all", help="comma-separated op names, 'all' or 'none'")
    p.add_argument("--no-model", action="store_true", help="skip the whole-network timings")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument(
        "--precision",
        choices=precision.MODES,
        default="fp32",
        help="fp32 (TF32 off on both), tf32, fp16 or bf16 mixed precision (GPU only)",
    )
    p.add_argument("--tf32", action="store_true", help="the same as --precision tf32")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for both (minidl.set_num_threads, torch.set_num_threads); default: "
        "minidl's (MINIDL_NUM_THREADS, else the cores it may use) and PyTorch's own",
    )
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.tf32:
        args.precision = "tf32"
    if args.device == "cpu" and args.precision != "fp32":
        raise SystemExit(
            f"--precision {args.precision} is measured on the GPU only (--device cuda): NumPy has "
            "no TF32 and no BLAS for float16, and minidl runs 16-bit storage only in its CUDA "
            "kernels (on the CPU, the kernel emulator checks them for correctness, not speed)"
        )
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and args.device == "cuda" and not torch.cuda.is_available():
        # e.g. MINIDL_CUDA_EMULATE=1 beside a CPU build of PyTorch: only our side can be timed
        print("PyTorch has no CUDA device here: only minidl is timed", file=sys.stderr)
        torch = None
    if args.threads is not None:
        mdl.set_num_threads(args.threads)
        if torch is not None:
            torch.set_num_threads(args.threads)
    ours = Ours(args.device, args.precision)
    theirs = Theirs(torch, args.device, args.precision) if torch is not None else None
    names = list(OPS) if args.ops == "all" else [] if args.ops == "none" else args.ops.split(",")
    unknown = [n for n in names if n not in OPS]
    if unknown:
        raise SystemExit(f"unknown ops {unknown}; choose from {list(OPS)}")
    results = {
        "device": args.device,
        "batch": args.batch,
        "precision": args.precision,
        "dtype": str(ours.precision.dtype),
        "tf32": ours.precision.tf32,
        "warmup": args.warmup,
        "steps": args.steps,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": mdl.get_num_threads(),
        "torch_threads": torch.get_num_threads() if torch is not None else None,
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "torch": torch.__version__ if torch is not None else None,
    }
    if not args.no_model:
        mine = bench_model(ours, args.batch, args.warmup, args.steps)
        other = bench_model(theirs, args.batch, args.warmup, args.steps) if theirs else None
        results["alexnet"] = {k: compare(mine[k], other[k] if other else None) for k in mine}
        results["train_step_ratio"] = results["alexnet"]["train_step"]["ratio"]
        if not args.no_memory:
            results["memory"] = peak_memory(args.device, args.batch, theirs is not None)
            if args.device == "cuda":
                results["memory"] = {
                    "how": "bytes reserved by each framework's GPU memory pool, MB",
                    "ours_mb": backend.cupy().get_default_memory_pool().total_bytes() / 2**20,
                    "theirs_mb": torch.cuda.max_memory_reserved() / 2**20 if torch else None,
                }
        if theirs is not None and args.device == "cuda":  # and against PyTorch's defaults
            defaults = bench_model(
                Theirs(torch, args.device, "defaults"), args.batch, args.warmup, args.steps
            )
            results["alexnet"]["train_step_vs_pytorch_defaults"] = compare(
                mine["train_step"], defaults["train_step"]
            )
            theirs = Theirs(torch, args.device, args.precision)  # its flags back for the ops
    results["ops"] = {}
    for name in names:
        mine = bench_op(ours, name, args.batch, args.warmup, args.steps)
        other = bench_op(theirs, name, args.batch, args.warmup, args.steps) if theirs else None
        results["ops"][name] = {k: compare(mine[k], other[k] if other else None) for k in mine}
    print(table(results))
    if "memory" in results:
        m = results["memory"]
        print(f"peak memory ({m['how']}): minidl {m.get('ours_mb')}, pytorch {m.get('theirs_mb')}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
