"""The walkthrough pages' code runs, so the pages cannot rot.

Each page's ```python blocks run in order as one script, in a fresh process whose working folder
is a temporary folder outside the checkout (the reader's own folder). A ```cuda block whose first
line is ``// file: NAME.cu`` is first saved there as NAME, as the page tells the reader to do.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["autograd.md", "custom_op.md", "onnx.md", "reduce.md", "tensor_api.md"]


def page_code(page: str) -> tuple[str, dict[str, str]]:
    """(the page's Python blocks joined, {file name: text} of its ``// file:`` blocks)."""
    text = (ROOT / "docs" / page).read_text()
    code = "\n".join(re.findall(r"^```python\n(.*?)^```", text, re.MULTILINE | re.DOTALL))
    files = {}
    for block in re.findall(r"^```cuda\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        named = re.match(r"// file: (\S+)\n", block)
        if named:
            files[named.group(1)] = block
    return code, files


def run_page(page: str, python, folder: Path, env: dict) -> subprocess.CompletedProcess:
    """Run ``page``'s code with ``python`` in ``folder`` (made here), its .cu files saved there."""
    code, files = page_code(page)
    assert code.strip(), f"docs/{page} has no python blocks"
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    (folder / "page.py").write_text(code)
    return subprocess.run(
        [str(python), "page.py"], cwd=folder, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("page", PAGES)
def test_page_code_runs(page, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MINIDL_CUDA_EMULATE"}
    env["PYTHONPATH"] = str(ROOT)  # this checkout's minidl, whatever is installed
    result = run_page(page, sys.executable, tmp_path / "reader", env)
    assert result.returncode == 0, f"docs/{page}:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"


def test_a_failing_block_fails_the_page(tmp_path, monkeypatch):
    """The runner is not vacuous: a page whose assertion fails makes run_page fail."""
    monkeypatch.setattr(
        sys.modules[__name__], "page_code", lambda page: ("assert 1 + 1 == 3\n", {})
    )
    result = run_page("any.md", sys.executable, tmp_path, dict(os.environ))
    assert result.returncode != 0 and "AssertionError" in result.stderr
