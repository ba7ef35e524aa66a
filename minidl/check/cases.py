"""The checks ``python -m minidl.check`` runs (``minidl/check/__init__.py`` prints and counts them).

Each op case is a named record: the function, its inputs (float arrays get gradients, integer
arrays are constants), and whether ``--quick`` runs it. Every case runs once per storage dtype on
the GPU branch (``device="cuda"``) and on the NumPy path with the same inputs and the same ``dy``;
the largest difference of the output and of every gradient, relative to the NumPy result's
largest value, must stay under ``report.tolerance`` of that dtype (``minidl.testing``'s).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import minidl as mdl
import minidl.functional as F
from minidl import backend, distributed, nn, optim
from minidl.check.report import Report, Skip, storage_dtypes, tolerance
from minidl.precision import GradScaler, Precision
from minidl.testing import forward_backward


@dataclass(frozen=True)
class Case:
    name: str
    fn: Callable
    shapes: tuple  # a shape per float input (seeded normal values), or an array used as given
    quick: bool = True
    distinct: bool = False  # no ties (max-pool's argmax must not depend on rounding)


def _targets(n: int, classes: int, ignore: int | None = None) -> np.ndarray:
    t = np.arange(n) * 7 % classes
    if ignore is not None:
        t[1] = ignore
    return t.astype(np.int64)


def _like(array: np.ndarray, t):
    """A constant array as a tensor of t's dtype and device."""
    return mdl.tensor(array, dtype=t.dtype, device=t.device)


def op_cases() -> list[Case]:
    """Odd sizes (partial thread blocks), every branch of each op, and AlexNet's layers."""
    conv, pool, lrn = F.conv2d, F.max_pool2d, F.local_response_norm
    weights = np.linspace(0.5, 2.0, 10)

    def smoothed(z):
        targets = _targets(6, 10, ignore=-100)
        return F.cross_entropy(z, targets, weight=_like(weights, z), label_smoothing=0.1)

    return [
        Case("conv2d 3x3 pad 1", lambda x, w, b: conv(x, w, b, padding=1),
             ((2, 3, 7, 9), (4, 3, 3, 3), (4,))),
        Case("conv2d 5x5 stride 2 pad 2 groups 2", lambda x, w, b: conv(x, w, b, 2, 2, groups=2),
             ((1, 4, 11, 10), (6, 2, 5, 5), (6,))),
        Case("conv2d 3x3 dilation 2", lambda x, w: conv(x, w, dilation=2),
             ((2, 2, 9, 9), (3, 2, 3, 3))),
        Case("max_pool2d 3/2", lambda x: pool(x, 3, 2), ((2, 3, 9, 11),), distinct=True),
        Case("max_pool2d 3/2 pad 1 ceil_mode", lambda x: pool(x, 3, 2, 1, ceil_mode=True),
             ((1, 2, 8, 7),), distinct=True),
        Case("local_response_norm 5 alpha 0.5", lambda x: lrn(x, 5, 0.5, 0.75, 2.0),
             ((2, 7, 5, 6),)),
        Case("relu", F.relu, ((3, 5, 7),)),
        Case("bias_relu", F.bias_relu, ((2, 5, 3, 7), (5,))),
        Case("cross_entropy", lambda z: F.cross_entropy(z, _targets(6, 10)), ((6, 10),)),
        Case("cross_entropy weight, smoothing, ignore_index", smoothed, ((6, 10),)),
        Case("batch_norm training",
             lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
             ((4, 3, 5, 5), (3,), (3,))),
        # AlexNet's layers at batch 2 (the paper's sizes; 227x227 input)
        Case("conv1 96x11x11 stride 4", lambda x, w, b: conv(x, w, b, 4),
             ((2, 3, 227, 227), (96, 3, 11, 11), (96,)), quick=False),
        Case("conv2 256x5x5 pad 2 groups 2", lambda x, w, b: conv(x, w, b, 1, 2, groups=2),
             ((2, 96, 27, 27), (256, 48, 5, 5), (256,)), quick=False),
        Case("conv3 384x3x3 pad 1", lambda x, w, b: conv(x, w, b, 1, 1),
             ((2, 256, 13, 13), (384, 256, 3, 3), (384,)), quick=False),
        Case("pool1 3/2 at 96x55x55", lambda x: pool(x, 3, 2), ((2, 96, 55, 55),),
             quick=False, distinct=True),
        Case("lrn1 at 96x55x55", lambda x: lrn(x, 5, 1e-4, 0.75, 2.0), ((2, 96, 55, 55),),
             quick=False),
        Case("relu at 96x55x55", F.relu, ((2, 96, 55, 55),), quick=False),
    ]  # fmt: skip


def _inputs(case: Case, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for shape in case.shapes:
        if case.distinct:  # a shuffled ramp: no two values equal, even after 16-bit rounding
            size = int(np.prod(shape))
            arrays.append((rng.permutation(size) / size * 4 - 2).reshape(shape))
        else:
            arrays.append(rng.standard_normal(shape))
    return arrays


def _f64(t) -> np.ndarray:
    return backend.to_numpy(t.data).astype(np.float64)


def max_relative_error(pairs) -> float:
    """The largest |a - b| over all pairs, each relative to max(1, max |b|) of its pair."""
    worst = 0.0
    for actual, expected in pairs:
        if actual.shape != expected.shape:
            raise AssertionError(f"shape {actual.shape}, expected {expected.shape}")
        scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
        worst = max(worst, float(np.abs(actual - expected).max(initial=0.0)) / scale)
    return worst


def compare(case: Case, dtype) -> tuple[float, float]:
    arrays = _inputs(case, seed=len(case.name))
    y, grads = forward_backward(case.fn, arrays, "cuda", dtype)
    y_ref, grads_ref = forward_backward(case.fn, arrays, "cpu", dtype)
    return max_relative_error([(y, y_ref), *zip(grads, grads_ref)]), tolerance(dtype)


def sgd_steps(device: str, dtype) -> np.ndarray:
    """Three SGD steps (momentum, weight decay; float32 master weights for 16-bit ones)."""
    rng = np.random.default_rng(8)
    w = mdl.tensor(rng.standard_normal((5, 301)).astype(dtype), requires_grad=True, device=device)
    optimizer = optim.SGD([w], lr=0.1, momentum=0.9, weight_decay=0.01)
    for _ in range(3):
        w.grad = mdl.tensor(rng.standard_normal(w.shape).astype(dtype), device=device)
        optimizer.step()
    return _f64(w)


def compare_sgd(dtype) -> tuple[float, float]:
    pair = (sgd_steps("cuda", dtype), sgd_steps("cpu", dtype))
    return max_relative_error([pair]), tolerance(dtype)


def check_ops(report: Report, quick: bool) -> None:
    for case in op_cases():
        if quick and not case.quick:
            continue
        for dtype in storage_dtypes():
            report.check(f"{case.name} [{dtype.name}]", lambda c=case, d=dtype: compare(c, d))
    for dtype in storage_dtypes():
        report.check(f"SGD step [{dtype.name}]", lambda d=dtype: compare_sgd(d))


# ---- properties the tests hold the kernels to --------------------------------------------------
def dropout_bits(dtype) -> str:
    """The GPU's dropout output and gradient equal the CPU's bit for bit (one mask, two devices)."""
    x = np.random.default_rng(3).standard_normal((3, 257, 5)).astype(dtype)
    results = [
        forward_backward(lambda t: F.dropout(t, 0.4), [x], d, dtype) for d in ("cuda", "cpu")
    ]
    (y, (dx,)), (y_ref, (dx_ref,)) = results
    if not (np.array_equal(y, y_ref) and np.array_equal(dx, dx_ref)):
        raise AssertionError(f"{int((y != y_ref).sum())} outputs differ from the CPU's")
    kept = float((y != 0).mean())
    if abs(kept - 0.6) > 5 * np.sqrt(0.24 / y.size):
        raise AssertionError(f"kept {kept:.3f} of the elements, expected 0.6")
    return f"{y.size} elements equal, {kept:.3f} kept"


def max_pool_deterministic() -> tuple[float, float]:
    """Many ties, two backward runs: equal bits; and the CPU's first-maximum rule (a tie sent
    elsewhere would move a whole gradient; the sums of overlapping windows may differ in order)."""
    x = np.random.default_rng(4).integers(0, 3, (2, 8, 17, 17)).astype(np.float32)
    fn = lambda t: F.max_pool2d(t, 3, 2)
    (_, (first,)), (_, (second,)) = (
        forward_backward(fn, [x], "cuda", np.float32) for _ in range(2)
    )
    if not np.array_equal(first, second):
        raise AssertionError("two backward runs differ")
    (_, (cpu,)) = forward_backward(fn, [x], "cpu", np.float32)
    return max_relative_error([(first, cpu)]), tolerance(np.float32)


def gradcheck(case: Case) -> str:
    """The float64 gradient check of the GPU branch itself (finite differences on the GPU)."""
    arrays = _inputs(case, seed=len(case.name))
    if case.name == "relu" or case.name == "bias_relu":  # away from the kink at 0
        arrays[0] = np.sign(arrays[0]) * (0.1 + np.abs(arrays[0]))
    tensors = [mdl.tensor(a, requires_grad=True, device="cuda") for a in arrays]
    mdl.gradcheck(case.fn, tensors)
    return "atol 1e-5, rtol 1e-3"


def seeded_dropout(x):
    mdl.manual_seed(5)  # the same mask for every evaluation of the finite differences
    return F.dropout(x, 0.5)


def check_properties(report: Report) -> None:
    for dtype in storage_dtypes():
        report.check(
            f"dropout mask equals the CPU's [{dtype.name}]", lambda d=dtype: dropout_bits(d)
        )
    report.check("max_pool2d backward: two runs equal bits", max_pool_deterministic)
    small = [c for c in op_cases() if c.quick]
    small.append(Case("dropout", seeded_dropout, ((3, 4, 5),)))
    for case in small:
        report.check(f"gradcheck {case.name} [float64]", lambda c=case: gradcheck(c))


# ---- a whole model, NCCL, training ---------------------------------------------------------------
def alexnet_cpu_vs_gpu(quick: bool) -> tuple[float, float]:
    """AlexNet (or, --quick, SmallAlexNet) in float64: logits and every gradient, GPU vs CPU."""
    from minidl.models.alexnet import AlexNet, SmallAlexNet

    mdl.manual_seed(0)
    if quick:
        model, shape = SmallAlexNet(num_classes=10), (2, 1, 28, 28)
    else:
        model, shape = AlexNet(num_classes=10), (2, 3, 227, 227)
    model.double().train()
    x = np.random.default_rng(6).standard_normal(shape)
    y = np.array([3, 7])
    pairs = []
    for device, net in (("cuda", copy.deepcopy(model).to("cuda")), ("cpu", model)):
        mdl.manual_seed(1)  # the same dropout masks on both devices
        logits = net(mdl.tensor(x, device=device))
        F.cross_entropy(logits, y).backward()
        pairs.append([_f64(logits)] + [_f64(p.grad) for p in net.parameters()])
    return max_relative_error(zip(*pairs)), tolerance(np.float64) * 10


def nccl_allreduce(dtype) -> str:
    if backend.emulating():
        raise Skip("no NCCL under the emulator (MPI sums its arrays; tests/test_distributed.py)")
    cp = backend.cupy()
    values = cp.asarray((np.arange(1000) % 17).astype(dtype))
    buffer = values.copy()
    distributed.allreduce_(buffer)  # a world of one: a one-rank NCCL communicator
    if not bool((buffer == values).all()):
        raise AssertionError("a one-rank all-reduce changed the values")
    return "one rank, 1000 elements"


def train_steps(mode_name: str, steps: int = 12) -> str:
    """A small AlexNet-like net on one fixed batch: every loss finite, the last below the first."""
    mode = Precision(mode_name)
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((32, 1, 12, 12)).astype(np.float32), rng.integers(0, 3, 32)
    mdl.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(3, 2),
        nn.Dropout(0.2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3),
    ).to("cuda")  # fmt: skip
    mode.cast_model(model)
    optimizer = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = GradScaler(enabled=mode.loss_scaling)
    losses = []
    with mode.matmul_mode():
        for _ in range(steps):
            logits = model(mode.cast_input(mdl.tensor(x, device="cuda")))
            loss = F.cross_entropy(mode.loss_input(logits), y)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            losses.append(loss.item())
    if not np.isfinite(losses).all() or not losses[-1] < 0.9 * losses[0]:
        raise AssertionError(f"losses {np.round(losses, 4).tolist()}")
    return f"loss {losses[0]:.3f} -> {losses[-1]:.3f} in {steps} steps"


def device() -> str:
    if not backend.gpu_available():
        backend.require_gpu()  # raises the reason: no CuPy, no driver, no GPU
    return "a GPU through CuPy"


def run_all(report: Report, quick: bool) -> None:
    check_ops(report, quick)
    check_properties(report)
    name = "SmallAlexNet" if quick else "AlexNet 227"
    report.check(f"{name} GPU vs CPU [float64]", lambda: alexnet_cpu_vs_gpu(quick))
    for dtype in storage_dtypes():
        report.check(f"NCCL all-reduce, one rank [{dtype.name}]", lambda d=dtype: nccl_allreduce(d))
    for mode in ("fp32", "tf32", "fp16", "bf16"):
        if mode == "bf16" and len(storage_dtypes()) < 4:
            report.check(
                "training steps [bf16]", lambda: (_ for _ in ()).throw(Skip("no ml_dtypes"))
            )
            continue
        report.check(f"training steps [{mode}]", lambda m=mode: train_steps(m))
