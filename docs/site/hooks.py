"""MkDocs hooks for minidl's website (mkdocs.yml names this file).

- The home page is README.md, its links into docs/ made relative to the site: the README stays
  the one source.
- The figures of docs/site/figures.py are drawn and added to the site as ``figures/NAME.png``.
- MathJax is copied from the django-static-mathjax package into ``assets/mathjax/``, with its
  configuration (docs/site/mathjax-config.js): formulas are typeset with no network.
- The course notebooks are executed by mkdocs-jupyter on a fresh kernel that imports this
  checkout's minidl; its cache is keyed by the engine's sources as well as the notebook, so a
  change to minidl re-runs them (in ``$MINIDL_SITE_CACHE``, by default .cache/mkdocs-jupyter/
  in the checkout). ``MINIDL_SITE_EXECUTE=0`` renders them unexecuted (a quick
  ``mkdocs serve``), ``MINIDL_SITE_UNEXECUTED="05_train_and_look_inside.py ..."`` only those
  named (tests/test_site.py: the costly ones, which tests/test_notebooks.py runs anyway);
  notebook 5 runs only where Fashion-MNIST is, notebook 7 only where the ``onnx`` package is
  (shown unexecuted elsewhere, said in the build's log).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

SITE_CODE = Path(__file__).resolve().parent
ROOT = SITE_CODE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # document and draw with this checkout's minidl

log = logging.getLogger("mkdocs.hooks.minidl")
MATHJAX_PLACEHOLDER = '<script src="minidl-site-mathjax"> </script>'  # mkdocs.yml's jupyter url
# What MathJax needs beside tex-chtml.js: its fonts, the TeX extensions it loads on demand, menu.
MATHJAX_PARTS = ["tex-chtml.js", "output/chtml", "input/tex/extensions", "ui", "a11y"]
SYSTEM_TMP = tempfile.gettempdir()
KERNEL_TMP = [""]  # the notebook kernels' temporary folder during a build
NEEDS = {  # notebook: (what it needs, whether it is here)
    "05_train_and_look_inside.py": ("Fashion-MNIST", lambda: fashion_mnist_here()),
    "07_inside_alexnet.py": ("the onnx package", lambda: importlib.util.find_spec("onnx")),
}


def load_figures():
    spec = importlib.util.spec_from_file_location("minidl_site_figures", SITE_CODE / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def engine_hash() -> str:
    """A hash of everything a notebook's output depends on besides the notebook itself."""
    digest = hashlib.sha256()
    for folder in ("minidl", "kernels", "models"):
        for path in sorted((ROOT / folder).rglob("*")):
            if path.suffix in {".py", ".cu", ".cuh", ".h"}:
                digest.update(str(path.relative_to(ROOT)).encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def fashion_mnist_here() -> bool:
    from minidl.data.datasets import FASHION_MNIST_FILES, fashion_mnist_folders

    return any(
        all((folder / name).is_file() for name in FASHION_MNIST_FILES)
        for folder in fashion_mnist_folders()
    )


def on_config(config):
    # The notebooks' kernels: this checkout's minidl, one BLAS thread (the build shares the
    # machine with the tests in CI), inline pictures; each notebook turns the emulator on itself.
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(ROOT) not in paths:  # once, though mkdocs serve calls this at every rebuild
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), *paths]))
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.pop("MINIDL_CUDA_EMULATE", None)
    # A temporary folder of their own: notebook 6 writes its .cu file under the system's, and in
    # CI tests/test_notebooks.py may be running the same notebook at the same moment.
    os.environ["TMPDIR"] = KERNEL_TMP[0] = tempfile.mkdtemp(prefix="minidl-site-", dir=SYSTEM_TMP)
    jupyter = config.plugins["mkdocs-jupyter"].config
    cache = Path(os.environ.get("MINIDL_SITE_CACHE", ROOT / ".cache" / "mkdocs-jupyter"))
    jupyter["cache_dir"] = str(cache / engine_hash())
    if os.environ.get("MINIDL_SITE_EXECUTE", "1") == "0":
        jupyter["execute"] = False
        return config
    unexecuted = os.environ.get("MINIDL_SITE_UNEXECUTED", "").replace(",", " ").split()
    for notebook, (what, here) in NEEDS.items():
        if notebook not in unexecuted and not here():
            log.info("%s is not here: %s is shown unexecuted", what, notebook)
            unexecuted.append(notebook)
    jupyter["execute_ignore"] = [*jupyter["execute_ignore"], *(f"*/{n}" for n in unexecuted)]
    return config


def readme_as_home() -> str:
    """README.md with its links to docs/ pages made relative to docs/, where index.md lives."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


def mathjax_files(config) -> list[File]:
    try:
        import mathjax  # django-static-mathjax: MathJax 3's browser files, no Django needed
    except ImportError as err:
        message = "the formulas need django-static-mathjax: pip install -e '.[docs]'"
        raise PluginError(message) from err

    es5 = Path(mathjax.__file__).resolve().parent / "static" / "mathjax" / "es5"
    found = []
    for part in MATHJAX_PARTS:
        paths = [es5 / part] if (es5 / part).is_file() else sorted((es5 / part).rglob("*"))
        found += [p for p in paths if p.is_file()]
    return [
        File.generated(config, f"assets/mathjax/{p.relative_to(es5)}", abs_src_path=str(p))
        for p in found
    ]


def on_files(files, config):
    files.append(File.generated(config, "index.md", content=readme_as_home()))
    config_js = SITE_CODE / "mathjax-config.js"
    files.append(File.generated(config, "assets/mathjax-config.js", abs_src_path=str(config_js)))
    for file in mathjax_files(config):
        files.append(file)
    for name, draw in load_figures().FIGURES.items():
        files.append(File.generated(config, name, content=draw()))
    return files


def on_page_content(html, page, config, files):
    # A notebook page would load MathJax a second time; the site's copy typesets it too.
    return html.replace(MATHJAX_PLACEHOLDER, "")


def remove_kernel_tmp():
    if KERNEL_TMP[0]:
        shutil.rmtree(KERNEL_TMP[0], ignore_errors=True)


def on_build_error(error):
    remove_kernel_tmp()


def on_post_build(config):
    remove_kernel_tmp()
    # The cache of an older engine is never hit again: keep only this one's.
    jupyter = config.plugins["mkdocs-jupyter"].config
    if jupyter["cache"]:
        current = Path(jupyter["cache_dir"])
        for folder in current.parent.iterdir():
            if folder.is_dir() and folder != current:
                shutil.rmtree(folder, ignore_errors=True)
