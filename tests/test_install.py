"""What an install brings: every package minidl imports is declared, a missing one is named.

CI runs in a virtual environment made new for each run (``.ci/run``), so what these tests see is
what ``pyproject.toml`` and the README's test command install, nothing left on the machine.
"""

import ast
import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

from tests.helpers import without_package

ROOT = Path(__file__).resolve().parents[1]

# The distribution that brings each third-party module minidl imports. A module missing here
# fails the test below: say which package brings it, and declare that package in pyproject.toml.
DISTRIBUTIONS = {
    "numpy": ("numpy",),
    "PIL": ("pillow",),
    "tqdm": ("tqdm",),
    "ml_dtypes": ("ml_dtypes",),
    "cupy": ("cupy-cuda12x", "cupy-cuda13x"),
    "cupy_backends": ("cupy-cuda12x", "cupy-cuda13x"),
    "cuda": ("cupy-cuda12x", "cupy-cuda13x"),  # cuda.pathfinder comes with CuPy
    "mpi4py": ("mpi4py",),
    "matplotlib": ("matplotlib",),
    "torch": ("torch",),  # minidl.testing's oracle, imported inside its functions
    "onnx": ("onnx",),  # minidl.onnx, the onnx extra
    "threadpoolctl": ("threadpoolctl",),  # minidl.threads: BLAS's threads and ours as one budget
}


def _requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0].strip()
    for stop in "[<>=!~ ":
        name = name.split(stop)[0]
    return name.lower().replace("_", "-")


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(the dependencies, {extra: its packages}) from pyproject.toml, names normalized."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project.get("optional-dependencies", {})
    return (
        {_requirement_name(r) for r in project["dependencies"]},
        {extra: {_requirement_name(r) for r in reqs} for extra, reqs in extras.items()},
    )


def third_party_imports(folder: Path) -> dict[str, list[str]]:
    """{top-level module: [where it is imported]} for every import in folder's .py files that is
    neither the standard library nor minidl itself."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("minidl", "models", "__future__"):
                    continue
                found.setdefault(top, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_package_minidl_imports_is_declared():
    dependencies, extras = declared()
    everything = dependencies.union(*extras.values())
    problems = []
    for folder in ("minidl", "models"):
        for module, where in third_party_imports(ROOT / folder).items():
            if module not in DISTRIBUTIONS:
                problems.append(f"{module} ({where[0]}): which package brings it? (add it above)")
            elif not {_requirement_name(d) for d in DISTRIBUTIONS[module]} & everything:
                problems.append(
                    f"{module} ({', '.join(where)}) is imported, but none of "
                    f"{DISTRIBUTIONS[module]} is a dependency or an extra in pyproject.toml"
                )
    assert not problems, "\n".join(problems)


def test_the_declared_dependencies_include_what_minidl_needs_to_import():
    """numpy, pillow, tqdm and ml_dtypes are not optional: a plain install must bring them."""
    dependencies, _ = declared()
    assert {"numpy", "pillow", "tqdm", "ml-dtypes"} <= dependencies, dependencies


def test_a_plain_install_carries_every_subpackage():
    """A folder of minidl with an __init__.py that setuptools does not list is missing from a
    wheel: `python -m minidl.check` or `import minidl.onnx` would fail after `pip install .`."""
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "minidl").rglob("__init__.py")
    }
    assert folders <= listed, f"add to [tool.setuptools] packages: {sorted(folders - listed)}"


# What the README's test command installs, so that no test skips for want of it in CI.
TEST_MODULES = {
    "torch": "torch==2.13.0 (the oracle)",
    "ml_dtypes": "a dependency",
    "mpi4py": "the mpi extra",
    "jupytext": "the notebooks extra",
    "nbclient": "the notebooks extra",
    "ipykernel": "the notebooks extra",
    "matplotlib": "the test and plot extras",
    "cupy": "the nvrtc extra",
    "onnx": "the test extra",
    "onnxruntime": "the test extra (the ONNX oracle)",
}


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI=true: CI must install every oracle")
def test_ci_installs_everything_the_tests_use():
    """Locally a missing oracle skips its tests; in CI it would hide them, so it is a failure."""
    missing = [
        f"{module} ({brings})"
        for module, brings in TEST_MODULES.items()
        if importlib.util.find_spec(module) is None
    ]
    assert not missing, f"not installed in CI's environment: {', '.join(missing)}"


# A process in which ml_dtypes cannot be imported, as after an install that lost it.
WITHOUT_ML_DTYPES = without_package("ml_dtypes")

FLOAT32_STILL_WORKS = WITHOUT_ML_DTYPES + textwrap.dedent(
    """
    import os
    import numpy as np
    import minidl as mdl, minidl.functional as F
    from minidl import dtypes, nn, optim

    assert dtypes.bfloat16 is None
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.ReLU(), nn.LocalResponseNorm(3), nn.MaxPool2d(2), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    )
    opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = mdl.tensor(np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32))
    loss = F.cross_entropy(net(x), np.array([0, 1, 2, 1]))
    loss.backward()
    opt.step()

    # kernel files that also list __nv_bfloat16 still serve float32 and float64
    os.environ["MINIDL_CUDA_EMULATE"] = "1"
    for dtype in (np.float32, np.float64):
        x16 = mdl.tensor(np.arange(16.0, dtype=dtype).reshape(1, 1, 4, 4), device="cuda")
        z = F.max_pool2d(x16, 2)
        assert z.numpy().ravel().tolist() == [5.0, 7.0, 13.0, 15.0]
        w = mdl.tensor(np.ones((2, 1, 3, 3), dtype), device="cuda")
        F.conv2d(F.local_response_norm(x.to("cuda").astype(dtype), 3), w).numpy()

    failures = []
    for ask in (
        lambda: mdl.tensor([1.0], dtype="bfloat16"),
        lambda: mdl.tensor([1.0]).astype("bfloat16"),
        lambda: mdl.precision.Precision("bf16"),
    ):
        try:
            ask()
            failures.append("no error")
        except ImportError as err:
            message = str(err)
            if "ml_dtypes" not in message or "pip install" not in message:
                failures.append(message)
    assert not failures, failures
    print("float32 ok without ml_dtypes")
    """
)


def test_without_ml_dtypes_float32_works_and_bfloat16_names_the_package(tmp_path):
    env = {**os.environ, "MINIDL_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", FLOAT32_STILL_WORKS], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "float32 ok without ml_dtypes" in result.stdout


@pytest.mark.slow
def test_without_ml_dtypes_the_example_says_what_bf16_needs(tmp_path):
    script = WITHOUT_ML_DTYPES + textwrap.dedent(
        f"""
        import runpy
        sys.argv = ["train_fashion_mnist.py", "--precision", "bf16", "--out", {str(tmp_path)!r}]
        runpy.run_path({str(ROOT / "examples" / "train_fashion_mnist.py")!r}, run_name="__main__")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MINIDL_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0
    assert "ml_dtypes" in result.stderr and "pip install" in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
