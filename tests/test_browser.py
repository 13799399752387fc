"""End to end: notebook 05 in JupyterLab, driven by headless Chromium (Playwright, system browser).

The test starts JupyterLab on localhost with a token it chooses, in a temporary root holding a copy
of notebook 05 (parameters injected by papermill, not executed), a smoke dataset and the results of
two models (a real no-KD student trained one epoch, and the thumbnail-descriptor stand-in). It opens
the notebook in Chromium, runs all cells from the Run menu, waits for the retrieval browser widget,
moves the query slider with the keyboard and checks that the displayed query image (its ``src``)
and the status line change; screenshots go to the test's folder and ``runs/test-artifacts/browser``.

Chromium is the Debian package (``/usr/bin/chromium``, installed by scripts/bootstrap.sh); nothing
downloads a browser. Without it the test is skipped with the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from viz_helpers import descriptor_results, train_smoke_student

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("DISTILVPR_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "runs" / "test-artifacts" / "browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(port: int, token: str, path: str, method: str = "GET") -> bytes:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                     headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.read()


def _prepare_root(root: Path, dataset: Path, work: Path) -> dict:
    """Copy the dataset, write the two models' results and notebook 05 with injected parameters."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    from distilvpr_lib.data.benchmark import Benchmark

    shutil.copytree(dataset, root / "data")
    benchmark = Benchmark.load(root / "data")
    student = train_smoke_student(root / "data", work / "nokd")
    (root / "results").mkdir()
    shutil.copy(student / "test_results.npz", root / "results" / "nokd.npz")
    descriptor_results(benchmark).save(root / "results" / "thumbnail.npz")
    params = {"dataset": "data", "results": {"no-KD student": "results/nokd.npz",
                                             "thumbnail descriptor": "results/thumbnail.npz"},
              "queries": [], "n_queries": 1, "top_k": 3, "out": "out05", "student": "no-KD student"}
    nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / "05_retrieval_browser.ipynb")), params)
    nbformat.write(nb, root / "05_retrieval_browser.ipynb")
    return params


@pytest.fixture()
def jupyter_lab(tmp_path: Path, request: pytest.FixtureRequest):
    """A JupyterLab server on a free localhost port with a test token, rooted at ``tmp_path/root``."""
    if not CHROMIUM.is_file():
        pytest.skip(f"headless browser test needs Chromium at {CHROMIUM} (apt-get install chromium; "
                    "scripts/bootstrap.sh installs it)")
    from distilvpr_lib.optional import install_hint, is_available

    if not is_available("playwright"):
        pytest.skip(f"playwright (Python) is not installed: {install_hint('playwright')}")
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.is_file():
        pytest.skip(f"{jupyter} not found (install the 'notebooks' extra)")

    root = tmp_path / "root"
    root.mkdir()
    _prepare_root(root, Path(request.getfixturevalue("smoke_dataset")), tmp_path)

    port, token = _free_port(), f"distilvpr-test-{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "jupyter-workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(tmp_path / "jupyter-settings"),
               DISTILVPR_PROJECT_ROOT=str(root))  # the notebook's relative paths are taken from this root
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [str(jupyter), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1", "--port-retries=0",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 90
        while True:
            try:
                json.loads(_api(port, token, "/api/status"))
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; log:\n{(tmp_path / 'jupyter.log').read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"port": port, "token": token, "root": root, "log": tmp_path / "jupyter.log"}
    finally:
        try:
            _api(port, token, "/api/shutdown", method="POST")  # shuts the kernels down too
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        log.close()


def _accept_dialog(page) -> bool:
    """Accept a JupyterLab dialog if one is open (e.g. "Select Kernel", shown when the kernel specs
    arrive late on a loaded machine; its default is the venv's python3). Returns whether one was."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
        page.wait_for_selector(".jp-Dialog", state="detached", timeout=10_000)
        return True
    return False


def _run_all_cells(page) -> None:
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.click(".lm-MenuBar-itemLabel:text-is('Run')")
    page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")


def _wait_for_browser_widget(page, timeout_s: float = 300.0) -> None:
    """Wait until the retrieval browser's query image is shown, accepting kernel dialogs (and then
    running all cells again, since a dialog blocks the first run)."""
    deadline = time.time() + timeout_s
    image = page.locator("img.distilvpr-query-image")
    while time.time() < deadline:
        if image.count() and image.first.is_visible():
            return
        if _accept_dialog(page):
            _run_all_cells(page)
        time.sleep(1.0)
    raise TimeoutError(f"the retrieval browser widget did not appear within {timeout_s:.0f} s")


def _screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, ARTIFACTS / name)
    return path


def test_notebook_05_browser_updates_when_the_query_moves(jupyter_lab: dict, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    port, token, root = jupyter_lab["port"], jupyter_lab["token"], jupyter_lab["root"]
    for stale in ARTIFACTS.glob("retrieval_browser*.png"):  # screenshots of an earlier run
        stale.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            page.goto(f"http://127.0.0.1:{port}/lab/tree/05_retrieval_browser.ipynb?token={token}",
                      wait_until="domcontentloaded", timeout=60_000)
            page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            time.sleep(2.0)  # let a kernel dialog show up, if JupyterLab wants one
            asked_for_kernel = _accept_dialog(page)
            # Opening must not modify the notebook: JupyterLab rewrites kernelspec / language_info to the
            # running kernel's and marks the notebook changed (autosave then rewrites the file) unless the
            # committed metadata (kept by papermill's parameterisation) is exactly the project kernel's.
            page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
            time.sleep(3.0)
            if not asked_for_kernel:  # choosing a kernel in the dialog legitimately changes the metadata
                changed = page.locator(".lm-TabBar-tab.jp-mod-current.jp-mod-dirty").count()
                assert changed == 0, "opening notebook 05 marked it changed: its kernelspec or language_info " \
                                     "differ from the bootstrapped kernel's (tests/test_notebooks.py)"
            _run_all_cells(page)

            query_image = page.locator("img.distilvpr-query-image")
            try:
                _wait_for_browser_widget(page)
                page.wait_for_function(
                    "() => { const s = document.querySelector('.distilvpr-status'); return s && s.innerText.includes('query'); }",
                    timeout=60_000)
            except Exception:
                _screenshot(page, tmp_path, "retrieval_browser_failed.png")
                raise
            before_src = query_image.get_attribute("src")
            before_status = page.locator(".distilvpr-status").inner_text()
            before_picture = page.locator("img.distilvpr-retrieval-image").get_attribute("src")
            assert before_src and before_src.startswith(("blob:", "data:image/png"))
            _screenshot(page, tmp_path, "retrieval_browser_before.png")

            # Move the query widget as a user would: focus the slider handle, press the right arrow.
            handle = page.locator(".distilvpr-query-slider .noUi-handle").first
            handle.scroll_into_view_if_needed()
            handle.focus()
            page.keyboard.press("ArrowRight")
            try:
                page.wait_for_function(
                    "(old) => { const i = document.querySelector('img.distilvpr-query-image'); return i && i.src !== old; }",
                    arg=before_src, timeout=60_000)
            except Exception:
                _screenshot(page, tmp_path, "retrieval_browser_failed.png")
                raise
            page.wait_for_function(
                "(old) => document.querySelector('.distilvpr-status').innerText !== old", arg=before_status,
                timeout=30_000)
            after_status = page.locator(".distilvpr-status").inner_text()
            after_src = query_image.get_attribute("src")
            after_picture = page.locator("img.distilvpr-retrieval-image").get_attribute("src")
            shot = _screenshot(page, tmp_path, "retrieval_browser.png")
        finally:
            browser.close()

    assert after_src != before_src
    assert after_status != before_status and "query" in after_status
    assert after_picture != before_picture, "the top-k picture is redrawn for the new query"
    assert shot.stat().st_size > 10_000
    # every cell ran: the last cell writes the metrics of the rendered queries
    metrics = json.loads((root / "out05" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"no-KD student", "thumbnail descriptor"}
    assert len(list((root / "out05").glob("retrieval_db*.png"))) == 1
