"""A workbench for one kernel: run it next to the NumPy reference, print the first pairs and the
largest error, and (on a real GPU) time a few launch shapes.

    python examples/check_kernel.py max_pool2d
    python examples/check_kernel.py local_response_norm --dtype float64
    MINIDL_CUDA_EMULATE=1 python examples/check_kernel.py conv2d      # no GPU: the emulator

Without a GPU the emulator is switched on automatically; edit kernels/<file>.cu and run again
to see your change (the emulator recompiles when the source changes).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import minidl as mdl  # noqa: E402
import minidl.functional as F  # noqa: E402
from minidl import backend, cuda  # noqa: E402

# op: (function of the input tensors, input shapes) at AlexNet-like sizes, small enough to emulate
OPS = {
    "conv2d": (
        lambda x, w, b: F.conv2d(x, w, b, stride=1, padding=2, groups=2),
        [(2, 8, 13, 13), (16, 4, 5, 5), (16,)],
    ),
    "max_pool2d": (lambda x: F.max_pool2d(x, 3, 2), [(2, 16, 27, 27)]),
    "local_response_norm": (
        lambda x: F.local_response_norm(x, 5, 1.0, 0.75, 2.0),
        [(2, 16, 13, 13)],
    ),
    "dropout": (lambda x: F.dropout(x, 0.5), [(4, 1024)]),
    "relu": (F.relu, [(2, 16, 13, 13)]),
    "cross_entropy": (lambda z: F.cross_entropy(z, np.arange(8) % 10), [(8, 10)]),
}


def run(fn, arrays, device, dtype, seed=0):
    mdl.manual_seed(seed)
    tensors = [mdl.tensor(a.astype(dtype), requires_grad=True, device=device) for a in arrays]
    y = fn(*tensors)
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(dtype)
    y.backward(dy)
    return y.numpy(), [t.grad.numpy() for t in tensors]


def show(label, ours, reference):
    ours, reference = np.ravel(ours), np.ravel(reference)
    error = np.abs(ours.astype(np.float64) - reference).max() if ours.size else 0.0
    print(f"{label}: max abs error {error:.3e}")
    for expected, got in list(zip(reference, ours))[:5]:
        print(f"    numpy {expected:+.8f}   kernel {got:+.8f}")
    return error


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("op", choices=sorted(OPS))
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = p.parse_args(argv)
    if not backend.emulating() and not backend.gpu_available():
        os.environ["MINIDL_CUDA_EMULATE"] = "1"
        print("no GPU here: running the kernels under the emulator (MINIDL_CUDA_EMULATE=1)")
    dtype = np.dtype(args.dtype)
    fn, shapes = OPS[args.op]
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(s) for s in shapes]
    y_ref, grads_ref = run(fn, arrays, "cpu", dtype)
    y, grads = run(fn, arrays, "cuda", dtype)
    worst = show("forward", y, y_ref)
    for i, (g, g_ref) in enumerate(zip(grads, grads_ref)):
        worst = max(worst, show(f"gradient of input {i}", g, g_ref))
    print(f"largest error: {worst:.3e}")

    if backend.emulating():
        return
    print("\nlaunch shapes (forward and backward, median of 20):")
    big = [tuple(s[0] * 32 if i == 0 else s for i, s in enumerate(shape)) for shape in shapes]
    inputs = [
        mdl.tensor(rng.standard_normal(s).astype(dtype), requires_grad=True, device="cuda")
        for s in big
    ]
    launch_1d = cuda.launch_1d  # every element-wise kernel launches through it
    for threads in (64, 128, 256, 512, 1024):
        cuda.launch_1d = functools.partial(launch_1d, threads=threads)
        times = []
        for _ in range(22):
            cuda.synchronize()
            start = time.perf_counter()
            y = fn(*inputs)
            y.backward(backend.xp("cuda").ones(y.shape, dtype=dtype))
            cuda.synchronize()
            times.append(time.perf_counter() - start)
        print(f"    {threads:5d} threads per block: {1000 * np.median(times[2:]):8.3f} ms")
    cuda.launch_1d = launch_1d


if __name__ == "__main__":
    main()
