"""A path in a comment is a promise: every repository path that a tracked file names must exist.

Scans the tracked text files (``git ls-files``) for paths whose first component is a top-level
folder of the repository (``docs/x.md``, ``kernels/x.cu``, ``minidl/ops/pool.py``, ...) and, for a
function named after a path as ``tests/reference.py::conv2d``, checks that the file defines it.
Paths made at run time (``runs/...``, ``~/.cache/minidl/...``, ``/usr/share/...``) are not
repository paths: they do not start with a top-level folder, or a ``/`` or ``~`` comes before them.
This file itself is not scanned: its examples are broken on purpose.
"""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".cu", ".cuh", ".h", ".toml", ".cfg"}
SELF = "tests/test_pointers.py"

# Where folders of the checkout land inside an installed wheel (pyproject.toml's package-dir):
# minidl/models/alexnet.py is models/alexnet.py here.
IN_THE_WHEEL = {"minidl/kernels": "kernels", "minidl/models": "models"}
# Paths in other projects' repositories that a citation names (not ours to check).
OTHER_PROJECTS = {
    "examples/flower17/dataset.sh": "Intel dffml's download script (minidl/data/flowers.py)",
}


def tracked_files() -> list[str]:
    try:
        listing = subprocess.run(
            ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        pytest.skip(f"not a git checkout ({err})")
    return listing.splitlines()


def pointer_pattern(folders) -> re.Pattern:
    """`folder/rest` not preceded by a path character, and optionally `::name`."""
    alternatives = "|".join(re.escape(f) for f in sorted(folders, key=len, reverse=True))
    return re.compile(
        rf"(?<![\w./~$-])((?:{alternatives})/[\w./-]*[\w/])(?:::([A-Za-z_][\w.]*))?(?![\w*<{{])"
    )


def defines(text: str, dotted: str) -> bool:
    """Does a source file define ``name`` (a def, a class, an assignment, a kernel, a macro)?"""
    for name in dotted.split("."):
        pattern = (
            rf"^\s*(?:async\s+)?(?:def|class)\s+{name}\b|^{name}\s*[:=]"
            rf"|__global__\s+void\s+{name}\s*\(|#define\s+{name}\b"
        )
        if not re.search(pattern, text, re.MULTILINE):
            return False
    return True


def broken_pointers(root: Path, files: list[str]) -> list[str]:
    """Every ``file:line: pointer`` among the text files in ``files`` (tracked paths) that names
    a missing path or function. The top-level folders are those of the tracked files, and a
    path exists when it is a tracked file or a folder of one."""
    pattern = pointer_pattern({f.split("/")[0] for f in files if "/" in f})
    # What CI's checkout will hold: the tracked files and their folders (not untracked drafts).
    present = set(files) | {str(parent) for f in files for parent in Path(f).parents}
    problems = []
    for name in (f for f in files if Path(f).suffix in SUFFIXES and f != SELF):
        path = root / name
        if not path.is_file():
            continue  # deleted in the working tree but not yet in the index
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for match in pattern.finditer(line):
                target, function = match.group(1).rstrip("/."), match.group(2)
                function = function and function.rstrip(".")  # a sentence's full stop
                if target in OTHER_PROJECTS:
                    continue
                for installed, here in IN_THE_WHEEL.items():
                    if target == installed or target.startswith(installed + "/"):
                        target = here + target[len(installed) :]
                where = root / target
                if target not in present:
                    problems.append(f"{name}:{number}: {target} does not exist (in git)")
                elif function and not (where.is_file() and defines(where.read_text(), function)):
                    problems.append(f"{name}:{number}: {target} defines no {function}")
    return list(dict.fromkeys(problems))  # a markdown link names its path twice on one line


def test_every_repository_path_named_in_the_tree_exists():
    files = tracked_files()
    assert any(f.startswith("docs/") for f in files)
    problems = broken_pointers(ROOT, files)
    assert not problems, "pointers to paths that are gone:\n" + "\n".join(problems)


def test_a_planted_broken_pointer_is_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "kernels").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "kernels" / "pool.cu").write_text("// pool.cu\n")
    (tmp_path / "tests" / "reference.py").write_text("def conv2d(x):\n    return x\n")
    (tmp_path / "docs" / "page.md").write_text(
        "\n".join(
            [
                "`kernels/pool.cu` is here, `kernels/*.cu` is a pattern,",  # fine
                "runs/fashion/curves.png and ~/.cache/minidl/docs/x.md are made at run time",
                "tests/reference.py::conv2d is defined",  # fine
                "see docs/max_pool2d.md",  # line 4: missing page
                "tests/reference.py::max_pool2d_reference",  # line 5: missing function
                "f'kernels/{file}.cu' is built at run time",  # fine
                "minidl/kernels/pool.cu is kernels/pool.cu in a wheel",  # fine
                "minidl/kernels/lrn.cu",  # line 8: missing in either place
            ]
        )
    )
    (tmp_path / "minidl").mkdir()
    (tmp_path / "minidl" / "__init__.py").write_text("")
    tracked = ["docs/page.md", "kernels/pool.cu", "minidl/__init__.py", "tests/reference.py"]
    problems = broken_pointers(tmp_path, tracked)
    assert problems == [
        "docs/page.md:4: docs/max_pool2d.md does not exist (in git)",
        "docs/page.md:5: tests/reference.py defines no max_pool2d_reference",
        "docs/page.md:8: kernels/lrn.cu does not exist (in git)",
    ]


def test_every_kernel_file_has_a_page_naming_it():
    pages = {p.name: p.read_text() for p in (ROOT / "docs").glob("*.md")}
    missing = [
        f"kernels/{cu.name}"
        for cu in sorted((ROOT / "kernels").glob("*.cu"))
        if not any(f"kernels/{cu.name}" in text for text in pages.values())
    ]
    assert not missing, f"kernel files that no docs/*.md page names: {missing}"


def test_every_page_and_notebook_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    docs = ROOT / "docs"
    pages = sorted(docs.glob("*.md")) + sorted((docs / "notebooks").glob("*.py"))
    missing = [str(p.relative_to(ROOT)) for p in pages if str(p.relative_to(ROOT)) not in readme]
    assert not missing, f"pages the README's reading order does not reach: {missing}"
