"""The engine's shape, kept by tests (STYLE.md, "habits in CI"): modules import downward only, one
module imports CuPy, functions stay under 60 lines and modules under 400. Each check is also run
on a planted fault, so it is known to fail when the code goes wrong."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minidl"
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST):
    """Every import statement, function-local ones included, except under ``if TYPE_CHECKING``
    (annotations only: nothing runs)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """{module: the package's modules it imports} for every .py file under root/package."""
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}

    def known(name: str) -> str:  # the longest prefix that is one of the package's modules
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    graph = {name: set() for name in files}
    for name, path in files.items():
        for node in imports_of(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                loaded = {known(alias.name) for alias in node.names}
            elif node.level == 0 and node.module:  # from X import n: X.n if a module, else X
                loaded = {known(f"{node.module}.{alias.name}") for alias in node.names}
            else:
                continue
            graph[name] |= {module for module in loaded if module and module != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_in_minidl():
    graph = import_graph(ROOT, "minidl")
    assert "minidl.tensor" in graph and "minidl.autograd" in graph["minidl.tensor"]
    assert not cycles(graph), (
        f"import circles (a module imports one that imports it): {cycles(graph)}"
    )


def test_the_cycle_check_finds_a_planted_circle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg import b\n")
    (tmp_path / "pkg" / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")  # a -> b -> c -> a, one of them local
    (tmp_path / "pkg" / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n"
    )
    assert cycles(import_graph(tmp_path, "pkg")) == [["pkg.a", "pkg.b", "pkg.c"]]


def cupy_importers(root: Path) -> list[str]:
    """Files that import CuPy: an import statement, or importlib.import_module("cupy...")."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = []
        for node in imports_of(tree):
            names += [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module":
                names += [a.value for a in node.args if isinstance(a, ast.Constant)]
        if any(str(n).split(".")[0] in ("cupy", "cupy_backends") for n in names if n):
            found.append(str(path.relative_to(root)))
    return found


def test_only_backend_imports_cupy(tmp_path):
    """minidl/backend.py is the one module that imports CuPy (its docstring and the README say
    so); everything else asks it (``backend.cupy()``)."""
    assert cupy_importers(PACKAGE) == ["backend.py"]
    (tmp_path / "planted.py").write_text("def f():\n    from cupy.cuda import nccl\n")
    (tmp_path / "sneaky.py").write_text("import importlib\nimportlib.import_module('cupy')\n")
    assert cupy_importers(tmp_path) == ["planted.py", "sneaky.py"]


def oversized(root: Path) -> list[str]:
    """Functions of more than MAX_FUNCTION_LINES lines, modules of more than MAX_MODULE_LINES."""
    found = []
    for path in sorted(root.rglob("*.py")):
        source = path.read_text()
        name = path.relative_to(root)
        if len(source.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{name}:{node.lineno} {node.name}: {lines} lines")
    return found


def test_functions_and_modules_stay_small():
    """STYLE.md: a file past a few hundred lines is probably two things; a function past a screen
    is hard to follow. Functions under 60 lines, modules under 400, in minidl/."""
    assert not oversized(PACKAGE), "\n".join(oversized(PACKAGE))


def test_the_size_check_finds_a_planted_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def long():\n{body}")
    (tmp_path / "short.py").write_text("def short():\n    return 1\n")
    assert oversized(tmp_path) == [f"long.py:1 long: {MAX_FUNCTION_LINES + 1} lines"]
