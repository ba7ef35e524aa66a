"""Everything minidl can only learn on a GPU, in one command and one folder, for a short window.

    PYTHONPATH=. python benchmarks/gpu_session.py --data fashion-mnist --out gpu-results

Run from a bare checkout: no install and no package registry (CuPy, NumPy and PyTorch already on
the machine; ml_dtypes for bf16, pytest for the GPU tier). ``--data`` is a folder holding the four
Fashion-MNIST ``*-ubyte.gz`` files (``/usr/share/datasets/fashion-mnist/`` on a machine with
``dataset-fashion-mnist``; bring them along on one without). The steps, in order:

    check        python -m minidl.check (every kernel, every dtype, AlexNet's layer sizes)
    gpu-tests    python -m pytest -m gpu (the test suite's GPU tier)
    bench-*      benchmarks/alexnet.py --device cuda --batch 128 against PyTorch, per precision
                 (fp32 with every op alone too; tf32, fp16, bf16 the whole network)
    train-*      AlexNet at 224x224 on Fashion-MNIST, fp16 and bf16: one epoch on 12,800 images

Each step writes ``OUT/<step>.log`` (and its JSON beside it; a rerun into the same OUT writes
over them); ``OUT/summary.json`` holds every step's exit status and seconds. A failed step
does not stop the others; the exit status is 1 if any failed. Expected: about 6 minutes on one
H100 (the time limits below add up to 14).
``--quick`` runs the same steps at toy sizes (the kernel emulator in the tests, a minute or two).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "tf32", "fp16", "bf16")


def steps(out: Path, data: str | None, quick: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) for every step."""
    py = sys.executable
    check = [py, "-m", "minidl.check", "--json", str(out / "check.json")]
    tests = [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"]
    tests += ["--junitxml", str(out / "gpu-tests.xml")]
    bench = [py, "benchmarks/alexnet.py", "--device", "cuda"]
    bench += (
        ["--batch", "2", "--warmup", "1", "--steps", "1", "--no-model", "--no-memory"]
        if quick
        else ["--batch", "128"]
    )
    train = [
        py,
        "examples/train_fashion_mnist.py",
        "--device",
        "cuda",
        "--epochs",
        "1",
        "--overwrite",
    ]
    train += (
        ["--model", "small", "--limit", "64", "--batch-size", "32"]
        if quick
        else ["--model", "alexnet", "--size", "224", "--limit", "12800"]
    )
    if data:
        train += ["--data", data]
    plan = [("check", check + (["--quick"] if quick else []), 150), ("gpu-tests", tests, 240)]
    for precision in PRECISIONS:
        ops = "relu1" if quick else ("all" if precision == "fp32" else "none")
        json_file = str(out / f"bench-{precision}.json")
        plan.append(
            (
                f"bench-{precision}",
                bench + ["--precision", precision, "--ops", ops, "--json", json_file],
                150,
            )
        )
    for precision in ("fp16", "bf16"):
        plan.append(
            (
                f"train-{precision}",
                train + ["--precision", precision, "--out", str(out / f"train-{precision}")],
                150,
            )
        )
    return plan


def run_step(name: str, command: list[str], limit: int, out: Path) -> dict:
    """Run one step from the checkout's root, its output into OUT/<name>.log."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    with open(out / f"{name}.log", "w") as log:
        log.write("$ " + " ".join(command) + "\n\n")
        log.flush()
        try:
            rc = subprocess.run(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=limit
            ).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\n[gpu_session] stopped after {limit} s\n")
            rc = "timeout"
    seconds = time.perf_counter() - start
    return {
        "step": name,
        "status": "PASS" if rc == 0 else "FAIL",
        "exit": rc,
        "seconds": round(seconds, 1),
        "log": f"{name}.log",
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="gpu-results", help="the folder for every log and JSON")
    parser.add_argument("--data", help="folder of the four Fashion-MNIST .gz files")
    parser.add_argument("--quick", action="store_true", help="toy sizes (the emulator, tests)")
    parser.add_argument("--only", help="comma-separated step names (default: all)")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = steps(out, args.data, args.quick)
    if args.only:
        wanted = args.only.split(",")
        unknown = set(wanted) - {name for name, _, _ in plan}
        if unknown:
            raise SystemExit(
                f"--only: unknown steps {sorted(unknown)}; steps: {[n for n, _, _ in plan]}"
            )
        plan = [step for step in plan if step[0] in wanted]
    results = []
    for name, command, limit in plan:
        result = run_step(name, command, limit, out)
        results.append(result)
        print(
            f"{result['status']}  {name:<12} {result['seconds']:7.1f} s   {out / result['log']}",
            flush=True,
        )
    failed = [r["step"] for r in results if r["status"] != "PASS"]
    total = sum(r["seconds"] for r in results)
    (out / "summary.json").write_text(
        json.dumps(
            {"quick": args.quick, "seconds": round(total, 1), "failed": failed, "steps": results},
            indent=1,
        )
    )
    print(f"{len(results) - len(failed)} of {len(results)} steps passed in {total:.0f} s; {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
