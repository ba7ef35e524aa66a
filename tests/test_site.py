"""The website builds strictly and renders in a real browser.

``mkdocs build --strict`` runs once into a temporary folder (the course notebooks executed, the
figures drawn, the API page from the docstrings); a copy of the docs with one broken link must
fail the same build. The built pages are then served from a local HTTP server and opened in
headless Chromium (Debian's ``chromium``, driven by Playwright's Python API): the home page, an
op page and an executed notebook render, their figures are images that are not blank, their
formulas are typeset by MathJax, the browser console shows no error and no request leaves the
machine. Screenshots go to ``$MINIDL_SITE_SHOTS`` (a folder CI can show), else a temporary folder.

Locally the tests skip without the ``docs`` extra or without Chromium; in CI (``CI=true``) a
missing tool is a failure, as in tests/test_install.py, so the site is never silently unchecked.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import importlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
IN_CI = bool(os.environ.get("CI"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PAGES = {  # name: (path in the site, images that must be there and not blank)
    "home": ("index.html", None),
    "conv": ("conv/index.html", "img[src$='figures/conv_im2col.png']"),
    "notebook": ("notebooks/02_convolution/index.html", ".jp-OutputArea-output img"),
}
FIGURES = ["conv_im2col", "pool_threads", "lrn_window", "reduce_tree", "dropout_launches"]
BUILD_TIMEOUT = 900  # seconds; the notebooks' execution is most of it
# Rendered unexecuted here, to keep the docs job within its CI budget: on a loaded two-core
# machine notebook 5 took 60 s of the full build's 110 s (it trains) and notebook 7 17 s (49 s for
# the whole build on a quiet one); tests/test_notebooks.py runs both top to bottom and checks
# their pictures. The site's own build (mkdocs build --strict) executes them all.
UNEXECUTED = "05_train_and_look_inside.py 07_inside_alexnet.py"


def need(module: str):
    """Import ``module``; without it skip, or fail in CI, where the docs extra is installed."""
    if importlib.util.find_spec(module.split(".")[0]) is None:
        if IN_CI:
            pytest.fail(f"{module} is not installed in CI (the docs extra)")
        pytest.skip(f"{module} is not installed (pip install -e '.[docs]')")
    return importlib.import_module(module)


def need_chromium() -> str:
    if not os.access(CHROMIUM, os.X_OK):
        if IN_CI:
            pytest.fail(f"no Chromium at {CHROMIUM} in CI (.ci/run installs Debian's chromium)")
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def mkdocs_build(config: Path, out: Path, **env) -> subprocess.CompletedProcess:
    need("mkdocs")
    need("material")
    need("mkdocs_jupyter")
    need("mkdocstrings_handlers.python")
    need("mathjax")
    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1", **env}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)]
    return subprocess.run(
        [*command, "-d", str(out)],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )


def build_the_site(out: Path) -> float:
    """mkdocs build --strict of the real site into ``out``; its wall time in seconds."""
    start = time.perf_counter()
    # Its own notebook cache (keyed by the notebook and minidl's sources): a build evicts the
    # entries it did not use, and this one leaves notebooks 5 and 7 unexecuted.
    cache = ROOT / ".cache" / "mkdocs-jupyter-test"
    settings = {"MINIDL_SITE_UNEXECUTED": UNEXECUTED, "MINIDL_SITE_CACHE": str(cache)}
    result = mkdocs_build(ROOT / "mkdocs.yml", out, MINIDL_SITE_EXECUTE="1", **settings)
    seconds = time.perf_counter() - start
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    for path, _ in PAGES.values():
        assert (out / path).is_file(), f"{path} was not built"
    for name in FIGURES:  # drawn at build time (docs/site/figures.py), none of them blank
        figure = out / "figures" / f"{name}.png"
        assert figure.is_file() and pixels_std(figure.read_bytes()) > 2.0, f"{figure.name}"
    assert (out / "assets" / "mathjax" / "tex-chtml.js").is_file()
    home = (out / "index.html").read_text()
    assert "A small deep-learning engine you can read in a day" in home  # README.md is the home
    api = (out / "api" / "index.html").read_text()
    assert "local_response_norm" in api and "gradcheck" in api
    return seconds


def copy_of_the_docs(tmp: Path) -> Path:
    """A copy of docs/ and of mkdocs.yml pointing at it; returns the copied config."""
    shutil.copytree(ROOT / "docs", tmp / "docs")
    text = (ROOT / "mkdocs.yml").read_text()
    for old, new in [
        ("docs_dir: docs\n", f"docs_dir: {tmp / 'docs'}\n"),
        ("- docs/site/hooks.py\n", f"- {ROOT / 'docs' / 'site' / 'hooks.py'}\n"),
        ("paths: [.]\n", f"paths: [{ROOT}]\n"),
        # the real build's notebook cache stays as it is (a build evicts the entries it did not use)
        ("      include_source: true\n", "      include_source: true\n      cache: false\n"),
    ]:
        assert old in text, f"mkdocs.yml no longer says {old!r}: update this test"
        text = text.replace(old, new)
    text = re.sub(r"^watch:\n(?:  - .*\n)+", "", text, flags=re.MULTILINE)  # serve's, relative
    config = tmp / "mkdocs.yml"
    config.write_text(text)
    return config


def test_a_broken_link_fails_the_strict_build(tmp_path):
    """The strict build is not vacuous: one link to a missing page fails it, and says which."""
    config = copy_of_the_docs(tmp_path)
    page = tmp_path / "docs" / "conv.md"
    page.write_text(page.read_text() + "\nSee [the missing page](no_such_page.md).\n")
    result = mkdocs_build(config, tmp_path / "out", MINIDL_SITE_EXECUTE="0")
    assert result.returncode != 0, "a broken link did not fail mkdocs build --strict"
    assert "no_such_page.md" in result.stderr


def test_a_notebook_that_raises_fails_the_build(tmp_path):
    """The notebooks really run: one whose cell raises fails the build, and says why."""
    config = copy_of_the_docs(tmp_path)
    course = tmp_path / "docs" / "notebooks"
    for notebook in course.glob("*.py"):
        notebook.unlink()  # only the planted one runs (the missing ones: warnings, later)
    planted = '# %% [markdown]\n# # A planted failure\n\n# %%\nraise RuntimeError("planted here")\n'
    (course / "01_autograd.py").write_text(planted)
    result = mkdocs_build(
        config, tmp_path / "out", MINIDL_SITE_EXECUTE="1", MINIDL_SITE_UNEXECUTED=""
    )
    assert result.returncode != 0, "a notebook that raises did not fail the build"
    assert "planted here" in result.stderr + result.stdout


# ---- in the browser ------------------------------------------------------------------------------
@contextlib.contextmanager
def serve(folder: Path):
    """An HTTP server for ``folder`` on a free local port; yields its base URL."""
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    executable = need_chromium()
    sync_api = need("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("MINIDL_SITE_SHOTS")
    if not folder:
        return tmp_path_factory.mktemp("site-shots")
    Path(folder).mkdir(parents=True, exist_ok=True)
    return Path(folder)


class Visit:
    """A page opened in the browser, with what its console and network said."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url}"))
        self.page.on("request", self._request)
        self.page.on("response", self._response)
        self.page.goto(url, wait_until="networkidle")

    def _console(self, message):
        if message.type == "error":
            self.problems.append(f"console error: {message.text}")

    def _request(self, request):
        if not request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            self.problems.append(f"request off the machine: {request.url}")

    def _response(self, response):
        if response.status >= 400:
            self.problems.append(f"HTTP {response.status}: {response.url}")

    def typeset(self) -> int:
        """Wait for MathJax to finish; the number of typeset formulas."""
        self.page.wait_for_function(
            "() => window.MathJax && MathJax.startup && MathJax.startup.promise"
        )
        return self.page.evaluate(
            "() => MathJax.startup.promise.then("
            "() => document.querySelectorAll('mjx-container').length)"
        )


def pixels_std(png: bytes) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.float64).std())


def blank_images(page, selector: str) -> tuple[int, list[str]]:
    """(how many images match, a line for each that did not load or whose pixels, as the
    browser draws them, are all one colour)."""
    images = page.locator(selector)
    found = []
    for k in range(images.count()):
        image = images.nth(k)
        image.scroll_into_view_if_needed()
        src = (image.get_attribute("src") or "")[:60]
        if not image.evaluate("img => img.complete && img.naturalWidth > 0"):
            found.append(f"image {k} ({src}) did not load")
        elif pixels_std(image.screenshot()) < 2.0:
            found.append(f"image {k} ({src}) is blank")
    return images.count(), found


def page_problems(browser, url: str, images: str | None, math: bool, shot: Path) -> list[str]:
    """What is wrong with one page as Chromium shows it; saves its screenshot to ``shot``."""
    visit = Visit(browser, url)
    page, problems = visit.page, []
    try:
        if page.locator("h1").count() == 0:
            problems.append("no heading rendered")
        if page.locator("nav.md-nav").count() == 0:
            problems.append("no navigation")
        if math and visit.typeset() == 0:
            problems.append("no formula typeset by MathJax")
        if images:
            count, blank = blank_images(page, images)
            problems += blank if count else [f"no image matches {images}"]
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.close()
    return problems + visit.problems


@pytest.mark.slow
def test_the_site_builds_and_renders_in_chromium(tmp_path, browser, shots):
    """One test, so that CI's two test workers never build the site twice."""
    site = tmp_path / "site"
    seconds = build_the_site(site)
    start = time.perf_counter()
    problems = {}
    with serve(site) as url:
        for name, (path, images) in PAGES.items():
            # The README has no formula; the op page and the notebook have.
            shot = shots / f"{name}.png"
            found = page_problems(browser, f"{url}/{path}", images, name != "home", shot)
            if found:
                problems[path] = found
    print(f"build {seconds:.1f} s, browser {time.perf_counter() - start:.1f} s, shots in {shots}")
    assert not problems, problems


def test_the_image_check_finds_a_blank_figure(tmp_path, browser):
    """The figure check is not vacuous: of a drawn image and a blank one, it flags the blank."""
    from PIL import Image

    blank = Image.new("RGB", (120, 80), "white")
    drawn = Image.new("RGB", (120, 80), "white")
    drawn.paste((30, 60, 200), (20, 20, 100, 60))
    blank.save(tmp_path / "blank.png")
    drawn.save(tmp_path / "drawn.png")
    icon = '<link rel="icon" href="data:,">'  # no favicon.ico request, no 404
    page = (
        f'<html><head>{icon}</head><body><img src="drawn.png"><img src="blank.png"></body></html>'
    )
    (tmp_path / "index.html").write_text(page)
    with serve(tmp_path) as url:
        visit = Visit(browser, f"{url}/index.html")
        try:
            count, blank_ones = blank_images(visit.page, "img")
        finally:
            visit.page.close()
    assert count == 2
    assert len(blank_ones) == 1 and "blank.png" in blank_ones[0], blank_ones
    assert not visit.problems, visit.problems
