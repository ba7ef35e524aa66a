"""``python -m minidl.check``, the self-test a user runs on their GPU, runs here on the emulator
(``--quick``), so it cannot rot: clean kernels pass, a kernel with one index broken fails."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minidl import backend, cuda
from minidl.check import cases
from minidl.check.report import Report

ROOT = Path(__file__).resolve().parents[1]


def run_check(tmp_path, *args, emulate=True):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIDL_CACHE": str(tmp_path / "cache")}
    env.pop("MINIDL_CUDA_EMULATE", None)
    if emulate:
        env["MINIDL_CUDA_EMULATE"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "minidl.check", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("check")
    result = run_check(folder, "--quick", "--json", str(folder / "check.json"))
    return result, json.loads((folder / "check.json").read_text())


def test_the_quick_check_passes_on_the_emulator(clean_run):
    result, report = clean_run
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert report["counts"]["FAIL"] == 0
    names = [r["name"] for r in report["results"]]
    compiled = {n.split()[1] for n in names if n.startswith("compile ")}
    assert compiled == {p.name for p in cuda.kernel_dir().glob("*.cu")}
    for dtype in ("float32", "float64", "float16", "bfloat16"):  # every dtype the kernels declare
        assert f"conv2d 3x3 pad 1 [{dtype}]" in names
        assert f"dropout mask equals the CPU's [{dtype}]" in names
    for mode in ("fp32", "tf32", "fp16", "bf16"):
        assert f"training steps [{mode}]" in names
    assert any(n.startswith("gradcheck max_pool2d") for n in names)
    assert "SmallAlexNet GPU vs CPU [float64]" in names
    # only NCCL is skipped under the emulator, and says why
    skipped = [r for r in report["results"] if r["status"] == "SKIP"]
    assert skipped and all(r["name"].startswith("NCCL") and r["detail"] for r in skipped)


def test_every_line_says_pass_fail_or_skip_with_its_numbers(clean_run):
    result, report = clean_run
    lines = [line for line in result.stdout.splitlines() if line[:4] in ("PASS", "FAIL", "SKIP")]
    assert len(lines) == len(report["results"])
    assert "max err" in next(line for line in lines if "conv2d 3x3 pad 1 [float32]" in line)
    assert "device" in report["environment"] and "numpy" in report["environment"]
    assert result.stdout.rstrip().splitlines()[-1].startswith(f"{report['counts']['PASS']} passed")


@pytest.mark.slow
def test_a_planted_kernel_bug_fails_the_check(tmp_path):
    kernels = tmp_path / "kernels"
    shutil.copytree(cuda.kernel_dir(), kernels)
    source = (kernels / "pool.cu").read_text()
    old = "int w = ox * sw - pw + j * dw;"
    assert old in source
    (kernels / "pool.cu").write_text(source.replace(old, "int w = ox * sw - pw + j * dw + 1;", 1))
    result = run_check(tmp_path, "--quick", "--kernels", str(kernels))
    assert result.returncode == 1, result.stdout[-3000:]
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert any("max_pool2d 3/2 [float32]" in line for line in failed), failed


# One index broken in each other kernel file: the op comparisons (in-process, the same code as the
# command runs) notice it. The mutations are tests/test_kernels.py's kind.
MUTATIONS = [
    ("conv.cu", "int h = top + i * dh;", "int h = top + i * dh + 1;"),
    ("lrn.cu", "j <= min(C - 1, c + half)", "j < min(C - 1, c + half)"),
    ("activation.cu", "dx[i] = to_acc(y[i]) > acc_t<T>(0)", "dx[i] = to_acc(y[i]) >= acc_t<T>(1)"),
    (
        "loss.cu",
        "Acc target = (k == t[n]) ? Acc(1) : Acc(0);",
        "Acc target = (k == t[0]) ? Acc(1) : Acc(0);",
    ),
    ("dropout.cu", "? to_acc(x[i]) * scale", "? to_acc(x[i]) * scale * acc_t<T>(0.5)"),
]


@pytest.mark.parametrize("file, old, new", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_a_broken_kernel_fails_the_op_checks(file, old, new, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    monkeypatch.setenv("MINIDL_CACHE", str(tmp_path / "cache"))
    shutil.copytree(cuda.kernel_dir(), tmp_path / "kernels")
    path = tmp_path / "kernels" / file
    source = path.read_text()
    if old not in source:
        pytest.fail(f"mutation target not found in {file}: {old}")
    path.write_text(source.replace(old, new, 1))
    report = Report(stream=open(os.devnull, "w"))
    with cuda.kernel_source_override(tmp_path / "kernels"):
        cases.check_ops(report, quick=True)
        if file == "dropout.cu":
            report.check("dropout", lambda: cases.dropout_bits("float32"))
    assert report.counts()["FAIL"] > 0, f"breaking {file} went unnoticed"


def test_without_a_gpu_or_the_emulator_the_device_check_fails_and_says_what_to_do(tmp_path):
    if backend.gpu_available():
        pytest.skip("this machine has a GPU")
    result = run_check(tmp_path, "--quick", emulate=False)
    assert result.returncode == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith("FAIL  device"))
    assert "MINIDL_CUDA_EMULATE=1" in line or "cuda13" in line, line
