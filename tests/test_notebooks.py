"""The course notebooks (docs/notebooks/*.py, jupytext py:percent) run top to bottom.

Each notebook is converted with jupytext and executed cell by cell with nbclient on a fresh
python3 kernel, in a temporary working directory, so nothing lands in the repository. The
notebooks check what the reader sees (max errors, gradcheck results) with asserts, so a broken
engine fails here. Needs the ``notebooks`` extra (jupytext, nbclient, ipykernel, matplotlib).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minidl.data.datasets import FASHION_MNIST_FILES, fashion_mnist_folders

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "docs" / "notebooks"
COURSE = [
    "01_autograd",
    "02_convolution",
    "03_pool_and_lrn",
    "04_dropout",
    "05_train_and_look_inside",
    "06_your_own_op",
    "07_inside_alexnet",
]
NEEDS_FASHION_MNIST = {"05_train_and_look_inside"}
CELL_TIMEOUT = 600  # seconds for one cell; the training cell is the longest (about 30 s alone)


def fashion_mnist_available() -> bool:
    return any(
        all((folder / name).is_file() for name in FASHION_MNIST_FILES)
        for folder in fashion_mnist_folders()
    )


def execute(name: str, workdir: Path):
    """Run one notebook top to bottom in ``workdir``; returns the executed notebook."""
    notebook = jupytext.read(NOTEBOOKS / f"{name}.py")
    env = dict(os.environ)
    # The kernel imports the checkout's minidl (as an installed one would be found anyway);
    # HOME / MINIDL_CACHE (the emulator's compiled kernels) and MINIDL_DATA pass through.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("MINIDL_CUDA_EMULATE", None)  # each notebook turns the emulator on itself
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # One BLAS thread per kernel: CI runs two test workers on two cores, and OpenBLAS threads that
    # spin-wait for a busy core made notebook 5 three times slower on a loaded machine (6:25
    # against 2:09 wall, for 36 CPU-seconds of work).
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute(env=env)
    return notebook


def outputs(cell) -> list:
    return cell.get("outputs", [])


def has_image(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in outputs(cell))


def tagged(notebook, tag: str):
    cells = [c for c in notebook.cells if tag in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"expected one cell tagged {tag!r}, found {len(cells)}"
    return cells[0]


def test_the_course_lists_every_notebook():
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.py")) == COURSE
    readme = (NOTEBOOKS / "README.md").read_text()
    for name in COURSE:
        assert f"{name}.py" in readme, f"docs/notebooks/README.md does not list {name}.py"


@pytest.mark.slow
@pytest.mark.parametrize("name", COURSE)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    if name in NEEDS_FASHION_MNIST and not fashion_mnist_available():
        pytest.skip("Fashion-MNIST is not on this machine (apt-get install dataset-fashion-mnist)")
    before = sorted(p.name for p in NOTEBOOKS.iterdir())
    notebook = execute(name, tmp_path)
    assert sorted(p.name for p in NOTEBOOKS.iterdir()) == before, "a notebook wrote into the repo"

    errors = [o for c in notebook.cells for o in outputs(c) if o.get("output_type") == "error"]
    assert not errors
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "a code cell did not run"
    # Every notebook checks what it shows (asserts), prints its checks for the reader (max errors,
    # gradcheck results, accuracies) and ends in exercises.
    assert any("assert " in c.source for c in code), "a notebook without checks"
    text = "".join(o.get("text", "") for c in code for o in outputs(c))
    assert any(word in text for word in ("max error", "gradcheck", "accuracy")), "nothing printed"
    markdown = "".join(c.source for c in notebook.cells if c.cell_type == "markdown")
    assert "## Exercises" in markdown
    # Pictures render inline.
    assert any(has_image(c) for c in code), "no picture rendered inline"
    if name == "05_train_and_look_inside":
        # The paper's section 6.2 experiment: the nearest training images by the FC7 vector.
        assert has_image(tagged(notebook, "fc7-retrieval")), "the FC7 retrieval grid is missing"
