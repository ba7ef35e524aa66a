"""``python -m minidl.check``: does minidl work on this machine's GPU? The self-test a user runs.

It prints the versions and the device, compiles every kernel file for that device, and runs every
kernel-backed op's GPU branch against its NumPy path for every dtype the kernel declares, then
the properties the tests hold the kernels to (dropout masks equal to the CPU's bit for bit, a
deterministic max-pool backward, a float64 gradcheck of each op), AlexNet's forward and gradients
on the GPU against the CPU in float64, an NCCL all-reduce on a one-rank communicator, and a few
training steps per precision mode. One line per check, a summary, exit status 1 on any failure:

    python -m minidl.check                     # on a GPU: AlexNet's layer sizes, a few minutes
    python -m minidl.check --json check.json   # the same, and every result as JSON
    MINIDL_CUDA_EMULATE=1 python -m minidl.check --quick   # the kernel emulator (CI runs this)

``--kernels DIR`` takes the ``.cu`` files from another folder (a copy with a bug planted on
purpose must fail here). The cases themselves are in ``minidl/check/cases.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time
from dataclasses import asdict

import numpy as np

from minidl import backend, cuda
from minidl.check import cases
from minidl.check.report import Report


# ---- the machine --------------------------------------------------------------------------------
def environment() -> dict[str, str]:
    """Versions and the device, as ``key: value`` lines (torch.utils.collect_env in small)."""
    import minidl

    info = {
        "minidl": f"{minidl.__version__} ({minidl.__file__})",
        "python": f"{platform.python_version()} ({sys.executable})",
        "numpy": np.__version__,
        "ml_dtypes": _version("ml_dtypes") or "not installed: no bfloat16 (pip install ml_dtypes)",
        "kernels": str(cuda.kernel_dir()),
    }
    if backend.emulating():
        from minidl import emulator

        info["device"] = f"kernel emulator (MINIDL_CUDA_EMULATE=1), {emulator.compiler_version()}"
        return info
    info["cupy"] = _version("cupy") or "not installed (pip install 'minidl[cuda13]' or [cuda12])"
    if _version("cupy"):
        info.update(_gpu_info())
    return info


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def _gpu_info() -> dict[str, str]:
    cp = backend.cupy()
    info = {}
    try:
        runtime = cp.cuda.runtime
        info["cuda runtime"] = _cuda_version(runtime.runtimeGetVersion())
        info["cuda driver"] = _cuda_version(runtime.driverGetVersion())
        properties = runtime.getDeviceProperties(runtime.getDevice())
        name = (
            properties["name"].decode()
            if isinstance(properties["name"], bytes)
            else properties["name"]
        )
        info["gpu"] = f"{name}, compute capability {properties['major']}.{properties['minor']}"
        info["gpu memory"] = f"{properties['totalGlobalMem'] / 2**30:.1f} GiB"
    except Exception as err:  # no driver, no device: said in the device check
        info["gpu"] = f"none ({type(err).__name__}: {err})"
    try:
        info["nvrtc"] = ".".join(str(v) for v in cp.cuda.nvrtc.getVersion())
    except Exception as err:
        info["nvrtc"] = f"not usable ({err}); pip install 'minidl[nvrtc]'"
    return info


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"


def compile_kernels(report: Report) -> None:
    """Every ``.cu`` file, every kernel, every declared type: compiled for this device."""
    for path in sorted(cuda.kernel_dir().glob("*.cu")):
        report.check(f"compile {path.name}", lambda path=path: cuda.compile_all(path.stem))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m minidl.check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small shapes only (the emulator, CI)")
    parser.add_argument("--json", metavar="FILE", help="write the environment and every result")
    parser.add_argument("--kernels", metavar="DIR", help="take the .cu files from DIR")
    args = parser.parse_args(argv)
    report = Report()
    info = environment()
    for key, value in info.items():
        print(f"{key:>14}: {value}")
    print()
    start = time.perf_counter()
    if backend.emulating() or report.check("device", cases.device).status == "PASS":
        with (
            cuda.kernel_source_override(args.kernels) if args.kernels else contextlib.nullcontext()
        ):
            compile_kernels(report)
            cases.run_all(report, quick=args.quick)
    counts = report.counts()
    seconds = time.perf_counter() - start
    passed, failed, skipped = counts["PASS"], counts["FAIL"], counts["SKIP"]
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped in {seconds:.1f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"environment": info, "quick": args.quick, "counts": counts, "seconds": seconds,
                 "results": [asdict(r) for r in report.results]},
                f, indent=1,
            )  # fmt: skip
    return 1 if counts["FAIL"] else 0
