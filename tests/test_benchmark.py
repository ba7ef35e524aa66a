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


@pytest.mark.slow
def test_whole_network_at_ci_size(tmp_path):
    pytest.importorskip("torch")
    results = bench.main(
        ["--batch", "1", "--ops", "none", "--warmup", "1", "--steps", "1", "--no-memory"]
    )
    assert results["train_step_ratio"] > 0
    assert results["alexnet"]["train_step"]["ours"]["images_per_second"] > 0
