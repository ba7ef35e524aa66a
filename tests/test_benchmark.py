"""The benchmark runs at CI size so it cannot rot; no test asserts a time."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import alexnet as bench  # noqa: E402


def test_one_op_at_ci_size(tmp_path):
    out = tmp_path / "bench.json"
    results = bench.main(
        [
            "--batch",
            "2",
            "--ops",
            "pool2",
            "--no-model",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--json",
            str(out),
        ]
    )
    saved = json.loads(out.read_text())
    entry = saved["ops"]["pool2"]["forward_backward"]
    assert entry["ours"]["median_ms"] > 0
    if results["torch"] is not None:
        assert entry["ratio"] > 0 and entry["theirs"]["median_ms"] > 0


def test_runs_without_pytorch(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" now raises ImportError
    results = bench.main(["--batch", "2", "--ops", "relu1", "--no-model", "--steps", "1"])
    assert results["torch"] is None
    entry = results["ops"]["relu1"]["forward"]
    assert entry["ours"]["median_ms"] > 0 and entry["theirs"] is None and entry["ratio"] is None


@pytest.mark.slow
def test_whole_network_at_ci_size(tmp_path):
    pytest.importorskip("torch")
    results = bench.main(
        ["--batch", "1", "--ops", "none", "--warmup", "1", "--steps", "1", "--no-memory"]
    )
    assert results["train_step_ratio"] > 0
    assert results["alexnet"]["train_step"]["ours"]["images_per_second"] > 0


def _report_peak(queue):
    queue.put(bench.peak_rss_mb())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_fresh_process_reports_its_own_peak_memory():
    """Linux carries ru_maxrss across exec: a spawned child must not report its parent's peak."""
    import multiprocessing

    import numpy as np

    parent_big = np.ones(400 * 2**20 // 8)  # 400 MB resident in the parent
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_report_peak, args=(queue,))
    child.start()
    child_mb = queue.get(timeout=120)
    child.join()
    assert 0 < child_mb < bench.peak_rss_mb() - 300
    del parent_big
