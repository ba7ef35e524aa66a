"""benchmarks/gpu_session.py, the one command for a machine with a GPU: its steps run here at toy
sizes on the kernel emulator (PyTorch's side of the benchmark needs CUDA and is left out), so the
command a maintainer runs in a short GPU window is known to work before the window opens."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.test_data import write_idx

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_every_step_runs_on_the_emulator_and_writes_its_logs(tmp_path):
    data = tmp_path / "fashion"
    data.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 64), ("t10k", 32)):
        write_idx(
            data / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), np.uint8)
        )
        write_idx(data / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n).astype(np.uint8))
    out = tmp_path / "results"
    env = {**os.environ, "MINIDL_CUDA_EMULATE": "1", "MINIDL_CACHE": str(tmp_path / "cache")}
    command = [sys.executable, "benchmarks/gpu_session.py", "--quick", "--data", str(data)]
    result = subprocess.run(
        command + ["--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    summary = json.loads((out / "summary.json").read_text())
    logs = {s["step"]: (out / s["log"]).read_text()[-3000:] for s in summary["steps"]}
    assert result.returncode == 0, (result.stdout, [logs[name] for name in summary["failed"]])
    names = [s["step"] for s in summary["steps"]]
    assert names == [
        "check", "gpu-tests", "bench-fp32", "bench-tf32", "bench-fp16", "bench-bf16",
        "train-fp16", "train-bf16",
    ]  # fmt: skip
    assert json.loads((out / "check.json").read_text())["counts"]["FAIL"] == 0
    for precision in ("fp32", "tf32", "fp16", "bf16"):
        assert json.loads((out / f"bench-{precision}.json").read_text())["precision"] == precision
    assert "test accuracy" in logs["train-bf16"]
