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


def _small_alexnet_step(batch):
    """The benchmark's kind of step (SGD with momentum and weight decay) on SmallAlexNet's
    28x28 images: memory.measure_step's ``setup`` at a size a test can afford."""
    import numpy as np

    import minidl as mdl
    import minidl.functional as F
    from minidl import optim
    from minidl.models.alexnet import SmallAlexNet

    mdl.manual_seed(0)
    model = SmallAlexNet().to("cuda")
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32), device="cuda")
    target = rng.integers(0, 10, batch)

    def train_step():
        loss = F.cross_entropy(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return model, opt, x, train_step


def test_memory_mode_at_a_small_size(monkeypatch, capsys):
    import memory

    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    out = memory.main(["--batch", "2", "4", "--ops", "3"], setup=_small_alexnet_step)
    small, large = out["results"]
    params = sum(p.data.size for p in _small_alexnet_step(1)[0].parameters())
    for r in (small, large):
        # parameters, gradients and momentum: float32, 4 bytes each, three times over
        assert r["model_state_total"] == 3 * 4 * params
        # tracemalloc sees those very arrays between the steps, beside small Python objects
        known = r["model_state_total"] + r["input"]
        assert known <= r["live_between_steps"] < known + 2**20
        assert r["peak"] > r["live_between_steps"] + r["activations"]
        labels = [op["op"] for op in r["ops"]]
        assert labels[0] == "Conv2d 1 forward" and labels[-1] == "Conv2d 1 backward"
        assert "?" not in labels
        # each op has its own peak: one op reaches the step's, and no op is below its own ends
        assert sum(op["peak"] == r["peak"] for op in r["ops"]) == 1
        assert all(op["peak"] >= max(op["live_at_start"], op["live_at_end"]) for op in r["ops"])
    # conv2's backward rebuilds its columns, (32*5*5, N*13*13) float32: the largest transient
    assert large["largest_transient"]["op"] == "Conv2d 2 backward"
    assert large["largest_transient"]["bytes"] >= 32 * 25 * 4 * 13 * 13 * 4
    assert large["activations"] > 1.8 * small["activations"]  # linear in the batch
    assert out["fit"]["per_image"] > 0
    assert "peak of live arrays" in capsys.readouterr().out


def test_memory_mode_with_an_im2col_workspace(monkeypatch):
    import memory

    from minidl.ops import conv

    monkeypatch.setenv("MINIDL_CUDA_EMULATE", "1")
    monkeypatch.setattr(conv, "IM2COL_WORKSPACE", None)  # restored after main() sets it
    whole = memory.main(["--batch", "4"], setup=_small_alexnet_step)["results"][0]
    # conv2's columns take 32*5*5 * 13*13 * 4 bytes (0.52 MiB) an image: one image a block
    blocked = memory.main(["--batch", "4", "--im2col-workspace", "0.6"], setup=_small_alexnet_step)
    assert blocked["im2col_workspace"] == int(0.6 * 2**20)
    blocked = blocked["results"][0]
    assert blocked["peak"] < whole["peak"]
    conv2 = [op for op in blocked["ops"] if op["op"] == "Conv2d 2 backward"][0]
    assert conv2["peak"] - conv2["live_at_start"] < whole["largest_transient"]["bytes"] / 2


def _small_bench():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import small_alexnet

    return small_alexnet


def test_the_main_jobs_step_at_ci_size(tmp_path):
    out = tmp_path / "small.json"
    args = ["--batch", "4", "--warmup", "1", "--rounds", "2", "--steps", "1", "--threads", "1,2"]
    results = _small_bench().main([*args, "--breakdown", "--json", str(out)])
    saved = json.loads(out.read_text())
    for count in ("1", "2"):
        entry = saved["step"][count]
        assert entry["minidl"]["images_per_second"] > 0
        ops = entry["breakdown"]["ms"]
        assert ops["Conv2dFunction backward"] > 0 and ops["optimizer step"] > 0
        if results["torch"] is not None:
            assert entry["ratio"] > 0 and entry["pytorch"]["images_per_second"] > 0


def test_the_main_job_at_ci_size(tmp_path):
    from minidl.data import datasets

    try:
        datasets.find_fashion_mnist(download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not on this machine (tests never download)")
    args = ["--batch", "32", "--rounds", "1", "--steps", "1", "--warmup", "0"]
    results = _small_bench().main([*args, "--full", "--epochs", "1", "--limit", "128"])
    for job in results["job"].values():
        assert job["train_seconds"] > 0 and 0 <= job["test_accuracy"] <= 1
