"""Peak memory of AlexNet's GPU training step, measured without a GPU.

    python benchmarks/memory.py --batch 128 --ops 8     # a minute or so, 4 GB of RAM
    python benchmarks/memory.py --batch 16 32           # quicker: a line through the two
    python benchmarks/memory.py --batch 128 --im2col-workspace 64    # conv2d's columns bounded

On an H100, ``benchmarks/alexnet.py --device cuda`` reports the bytes CuPy's memory pool holds
after its steps. This script runs the same training step (``alexnet.training_setup``: forward,
cross-entropy, backward, SGD with momentum and weight decay) on ``device="cuda"`` under the kernel
emulator (``MINIDL_CUDA_EMULATE=1``), where a "GPU" array is a NumPy array: each op's GPU branch
allocates what it would allocate on the GPU, in host memory. NumPy reports its data buffers to
Python's ``tracemalloc``, so tracemalloc's peak is the peak of live array bytes of the GPU path.

That peak is a lower bound for the pool: CuPy rounds each block up to 512 bytes and keeps freed
blocks for reuse, and a free block too small for the next request stays beside a new one
(fragmentation). Neither cuBLAS's workspace nor OpenBLAS's buffers here are counted.

The breakdown: the model state (parameters, gradients and SGD's momentum: fixed), the batch, the
activations the graph holds at the end of forward (linear in the batch), and the largest transient
(what one op holds at its peak beyond what was live at its start and at its end: im2col columns,
a GEMM's output before its transpose). Ops are sampled at the start and end of each forward and
backward through ``autograd.profile``, whose hook runs before every clock read. The step measured
is the second: from then on SGD's momentum exists and the previous step's gradients are live
during forward (the benchmark's step clears them after forward, as PyTorch's loop does).
Activations are linear in the batch, so two small batches predict a large one (``fit``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import alexnet as bench  # noqa: E402  (the benchmark's training step: one source of truth)

from minidl import autograd, backend  # noqa: E402
from minidl.ops import conv  # noqa: E402

MiB = 2**20  # benchmarks/alexnet.py reports the GPU pools in these units (labelled "MB" there)


def alexnet_step(batch: int):
    """The benchmark's AlexNet (227x227) training step on "cuda": (model, optimizer, x, step)."""
    model, opt, x, _, train_step = bench.training_setup(bench.Ours("cuda"), batch)
    return model, opt, x, train_step


class OpSampler:
    """The ``synchronize`` hook of ``autograd.profile``, called at the start and at the end of
    every op's forward and backward: records the live bytes then and the peak since the previous
    call (tracemalloc's peak is reset at each call), so each interval has its own peak."""

    def __init__(self):
        self.table = {}  # profile()'s {op: [forward s, backward s, forward calls]}, once it runs
        self.samples = []  # (live bytes, peak since the previous sample, the table before it)

    def __call__(self):
        live, peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        self.samples.append((live, peak, self.state()))

    def state(self) -> dict:
        return {name: tuple(entry) for name, entry in self.table.items()}

    def ops(self, final_state: dict) -> list[tuple]:
        """(label, live at start, live at end, peak inside) per op, in the order they ran.

        Calls come in (start, end) pairs. profile() updates its table just after the end call,
        so the entry that changed by the next call names the op: forward adds a call, backward
        only seconds. Forward calls are numbered in order ("Conv2d 2" is the second
        convolution); backward ones count down, which names them right in a chain such as
        AlexNet (backward runs it in reverse)."""
        states = [s[2] for s in self.samples[1:]] + [final_state]
        backward_seen: dict[str, int] = {}
        records = []
        for i in range(0, len(self.samples) - 1, 2):
            (start, _, _), (end, peak, before) = self.samples[i], self.samples[i + 1]
            after = states[i + 1]
            changed = [name for name in after if after[name] != before.get(name)]
            label = "?"  # an op called inside another op's forward or backward breaks the pairs
            if len(changed) == 1:
                name = changed[0]
                calls = after[name][2]
                if calls != before.get(name, (0, 0, 0))[2]:
                    label = f"{name.removesuffix('Function')} {calls} forward"
                else:
                    backward_seen[name] = backward_seen.get(name, 0) + 1
                    index = calls - backward_seen[name] + 1
                    label = f"{name.removesuffix('Function')} {index} backward"
            records.append((label, start, end, peak))
        return records


def measure_step(batch: int, setup=alexnet_step) -> dict:
    """Bytes of live arrays in the second training step ``setup(batch)`` gives, on emulated
    "cuda". ``setup(batch)`` returns (model, optimizer, input tensor, step function)."""
    if not backend.emulating():
        raise RuntimeError("measure_step: set MINIDL_CUDA_EMULATE=1 (main() does)")
    tracemalloc.start()
    try:
        model, opt, x, train_step = setup(batch)
        train_step()  # the first step: SGD's momentum buffers appear
        params = model.parameters()
        state = {
            "parameters": sum(p.data.nbytes for p in params),
            "gradients": sum(p.grad.data.nbytes for p in params if p.grad is not None),
            "momentum": sum(s["velocity"].nbytes for s in opt.state if "velocity" in s),
        }
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        sampler = OpSampler()
        with autograd.profile(synchronize=sampler) as table:
            sampler.table = table
            train_step()
            final_state = sampler.state()
        after, last_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    ops = sampler.ops(final_state)
    forward_end = max(i for i, op in enumerate(ops) if op[0].endswith("forward"))
    transient = max(ops, key=lambda op: op[3] - max(op[1], op[2]))
    return {
        "batch": batch,
        "peak": max([last_peak] + [s[1] for s in sampler.samples]),
        "model_state": state,
        "model_state_total": sum(state.values()),
        "input": x.data.nbytes,
        "live_between_steps": before,
        "live_after_step": after,
        # what the graph holds when forward is done, beyond what was live before the step
        "activations": ops[forward_end][2] - before,
        "largest_transient": {
            "op": transient[0],
            "bytes": transient[3] - max(transient[1], transient[2]),
        },
        "ops": [
            {"op": label, "live_at_start": start, "live_at_end": end, "peak": peak}
            for label, start, end, peak in ops
        ],
    }


def fit(results: list[dict]) -> dict | None:
    """peak = fixed + per_image * batch through the two largest batches; its value at 128."""
    if len(results) < 2:
        return None
    a, b = sorted(results, key=lambda r: r["batch"])[-2:]
    per_image = (b["peak"] - a["peak"]) / (b["batch"] - a["batch"])
    fixed = a["peak"] - per_image * a["batch"]
    return {"fixed": fixed, "per_image": per_image, "peak_at_128": fixed + 128 * per_image}


def report(r: dict, ops: int = 0) -> str:
    s = r["model_state"]
    known = r["model_state_total"] + r["input"]
    transient = r["largest_transient"]
    lines = [
        f"batch {r['batch']}: peak of live arrays {r['peak'] / MiB:.1f} MiB "
        f"({r['peak'] / 2**30:.2f} GiB)",
        f"  parameters + gradients + momentum {r['model_state_total'] / MiB:9.1f} MiB"
        f"  ({s['parameters'] / MiB:.1f} + {s['gradients'] / MiB:.1f} + {s['momentum'] / MiB:.1f})",
        f"  live between steps                {r['live_between_steps'] / MiB:9.1f} MiB"
        f"  (the model state and the batch, {known / MiB:.1f} MiB, and small objects)",
        f"  activations at the end of forward {r['activations'] / MiB:9.1f} MiB",
        f"  largest transient                 {transient['bytes'] / MiB:9.1f} MiB"
        f"  ({transient['op']})",
    ]
    if ops:
        lines.append(f"  the {ops} ops that reach highest, in the order they ran:")
        lines.append(f"  {'op':<28}{'live at start':>14}{'at end':>10}{'peak inside':>13} MiB")
        top = sorted(r["ops"], key=lambda op: -op["peak"])[:ops]
        for op in sorted(top, key=r["ops"].index):
            lines.append(
                f"  {op['op']:<28}{op['live_at_start'] / MiB:>14.1f}"
                f"{op['live_at_end'] / MiB:>10.1f}{op['peak'] / MiB:>13.1f}"
            )
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, nargs="+", default=[16, 32])
    p.add_argument("--ops", type=int, default=0, help="list the N ops that reach highest")
    p.add_argument(
        "--im2col-workspace",
        type=float,
        default=None,
        metavar="MIB",
        help="bound conv2d's im2col columns to this many MiB (minidl.ops.conv.IM2COL_WORKSPACE; "
        "off unless MINIDL_IM2COL_WORKSPACE_MB sets it)",
    )
    p.add_argument("--json", default=None, help="write the results here")
    return p.parse_args(argv)


def main(argv=None, setup=alexnet_step) -> dict:
    args = parse_args(argv)
    os.environ["MINIDL_CUDA_EMULATE"] = "1"  # "cuda" is the emulator: arrays tracemalloc sees
    if args.im2col_workspace is not None:
        conv.IM2COL_WORKSPACE = int(args.im2col_workspace * MiB)
    workspace = conv.IM2COL_WORKSPACE
    print(f"im2col workspace: {'off' if workspace is None else f'{workspace / MiB:g} MiB'}")
    results = [measure_step(batch, setup) for batch in args.batch]
    for r in results:
        print(report(r, args.ops))
    line = fit(results)
    if line:
        print(
            f"fit: peak = {line['fixed'] / MiB:.1f} MiB + {line['per_image'] / MiB:.2f} MiB per "
            f"image; at batch 128: {line['peak_at_128'] / MiB:.1f} MiB"
        )
    out = {"numpy": np.__version__, "im2col_workspace": workspace, "results": results, "fit": line}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
