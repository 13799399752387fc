"""End to end: the notebooks in JupyterLab, driven by headless Chromium (Playwright, system browser).

Notebooks 02-04 at the smoke profile with only ``profile`` set: all cells run from the Run menu, in
order (02 trains the teacher 03 and the batch behind 04 use), and every figure is displayed inline
(checked in JupyterLab's notebook model and in the page).

Notebook 05: JupyterLab on localhost with a token the test chooses, in a temporary root holding a copy
of notebook 05 (parameters injected by papermill, not executed), a smoke dataset and the results of
two models (a real no-KD student trained one epoch, and the thumbnail-descriptor stand-in). It opens
the notebook in Chromium, runs all cells from the Run menu, waits for the retrieval browser widget,
moves the query slider with the keyboard and checks that the displayed query image (its ``src``)
and the status line change; screenshots go to the test's folder and ``runs/test-artifacts/browser``.

Chromium is the Debian package (``/usr/bin/chromium``, installed by scripts/bootstrap.sh); nothing
downloads a browser. Without it the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
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


def _skip_without_browser() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(f"headless browser test needs Chromium at {CHROMIUM} (apt-get install chromium; "
                    "scripts/bootstrap.sh installs it)")
    from distilvpr_lib.optional import install_hint, is_available

    if not is_available("playwright"):
        pytest.skip(f"playwright (Python) is not installed: {install_hint('playwright')}")
    if not (Path(sys.executable).parent / "jupyter").is_file():
        pytest.skip(f"{Path(sys.executable).parent / 'jupyter'} not found (install the 'notebooks' extra)")


@contextlib.contextmanager
def _lab_server(root: Path, tmp_path: Path, settings: dict[str, dict] | None = None):
    """Run JupyterLab on a free localhost port with a test token, rooted at ``root``.

    Its kernels take relative paths from ``root`` (``DISTILVPR_PROJECT_ROOT``). ``settings`` maps a
    JupyterLab settings id (``@jupyterlab/notebook-extension:tracker``) to user settings. The application
    object is exposed as ``window.jupyterapp`` so that a test can read the notebook model.
    """
    settings_dir = tmp_path / "jupyter-settings"
    for plugin_id, values in (settings or {}).items():
        package, _, plugin = plugin_id.rpartition(":")
        target = settings_dir / package / f"{plugin}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))
    port, token = _free_port(), f"distilvpr-test-{os.getpid()}-{time.time_ns()}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               JUPYTER_RUNTIME_DIR=str(tmp_path / "jupyter-runtime"),
               JUPYTER_DATA_DIR=str(tmp_path / "jupyter-data"), JUPYTER_CONFIG_DIR=str(tmp_path / "jupyter-config"),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "jupyter-workspaces"),
               JUPYTERLAB_SETTINGS_DIR=str(settings_dir),
               DISTILVPR_PROJECT_ROOT=str(root))  # the notebook's relative paths are taken from this root
    log = open(tmp_path / "jupyter.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--port-retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
         "--LabApp.expose_app_in_browser=True",
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


@pytest.fixture()
def jupyter_lab(tmp_path: Path, request: pytest.FixtureRequest):
    """JupyterLab rooted at ``tmp_path/root``, holding notebook 05 and two models' results to browse."""
    _skip_without_browser()
    root = tmp_path / "root"
    root.mkdir()
    _prepare_root(root, Path(request.getfixturevalue("smoke_dataset")), tmp_path)
    with _lab_server(root, tmp_path) as lab:
        yield lab


def _accept_dialog(page) -> bool:
    """Accept a JupyterLab dialog if one is open (e.g. "Select Kernel", shown when the kernel specs
    arrive late on a loaded machine; its default is the venv's python3). Returns whether one was."""
    dialog = page.locator(".jp-Dialog")
    if dialog.count() and dialog.first.is_visible():
        page.locator(".jp-Dialog .jp-mod-accept").first.click()
        page.wait_for_selector(".jp-Dialog", state="detached", timeout=10_000)
        return True
    return False


def _open_notebook(page, lab: dict, name: str, reset: bool = False) -> bool:
    """Open ``name``.ipynb in JupyterLab (``reset``: a fresh workspace) and accept a kernel dialog if JupyterLab
    shows one; returns whether it did."""
    query = f"reset&token={lab['token']}" if reset else f"token={lab['token']}"
    page.goto(f"http://127.0.0.1:{lab['port']}/lab/tree/{name}.ipynb?{query}", wait_until="domcontentloaded",
              timeout=60_000)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    time.sleep(2.0)  # let a kernel dialog show up, if JupyterLab wants one
    return _accept_dialog(page)


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

    root = jupyter_lab["root"]
    for stale in ARTIFACTS.glob("retrieval_browser*.png"):  # screenshots of an earlier run
        stale.unlink()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        try:
            asked_for_kernel = _open_notebook(page, jupyter_lab, "05_retrieval_browser")
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


#: Notebook state read from JupyterLab's own model (not the DOM, which only shows what is scrolled into view).
_NOTEBOOK_STATE_JS = """() => {
  const widget = window.jupyterapp.shell.currentWidget;
  const cells = widget.content.model.cells;
  const kernel = widget.sessionContext.session ? widget.sessionContext.session.kernel : null;
  const state = {code: 0, ran: 0, errors: [], images: 0, status: kernel ? kernel.status : 'none'};
  for (let i = 0; i < cells.length; i++) {
    const cell = cells.get(i);
    if (cell.type !== 'code') continue;
    state.code += 1;
    if (cell.executionCount) state.ran += 1;
    for (let j = 0; j < cell.outputs.length; j++) {
      const output = cell.outputs.get(j).toJSON();
      if (output.output_type === 'error') state.errors.push(output.ename + ': ' + output.evalue);
      if (output.data && output.data['image/png']) state.images += 1;
    }
  }
  return state;
}"""


def _run_in_lab(browser, lab: dict, name: str, tmp_path: Path, timeout_s: float = 600.0) -> dict:
    """Open ``name``.ipynb in JupyterLab, run all its cells as a user would (Run > Run All Cells), wait until
    every code cell has run or one failed; return the model's state plus the images the page displays."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        _open_notebook(page, lab, name, reset=True)
        _run_all_cells(page)
        deadline = time.time() + timeout_s
        while True:
            if _accept_dialog(page):  # a late kernel dialog blocks the first run
                _run_all_cells(page)
            state = page.evaluate(_NOTEBOOK_STATE_JS)
            if state["errors"] or (state["ran"] == state["code"] and state["status"] == "idle"):
                break
            if time.time() > deadline:
                _screenshot(page, tmp_path, f"{name}_timeout.png")
                raise TimeoutError(f"{name}: {state['ran']} of {state['code']} code cells ran in {timeout_s:.0f} s")
            time.sleep(2.0)
        time.sleep(1.0)  # the last outputs render
        state["shown"] = page.locator(".jp-OutputArea-output img").count()
        state["path_outputs"] = page.locator(".jp-OutputArea-output:has-text('PosixPath(')").count()
        if state["shown"]:  # the screenshot shows the first figure
            page.locator(".jp-OutputArea-output img").first.scroll_into_view_if_needed()
        _screenshot(page, tmp_path, f"{name}.png")
        return state
    finally:
        page.close()


def _unconditional_figures(name: str) -> int:
    """How many ``show_figure(...)`` calls of a committed notebook stand at the top level of a cell."""
    nb = json.loads((REPO / "notebooks" / f"{name}.ipynb").read_text())
    return sum(line.startswith("show_figure(") for cell in nb["cells"] if cell["cell_type"] == "code"
               for line in "".join(cell["source"]).splitlines())


def test_notebooks_02_to_04_show_their_figures_in_jupyterlab(smoke_dataset: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """What a newcomer does at the smoke profile: open 02, 03 and 04 in JupyterLab with only ``profile``
    set, run all cells; every figure is displayed inline (not a path), from the notebooks' own defaults
    (teacher_weights/smoke, runs/distill-smoke, and the batch ``distilvpr batch ablations/smoke.yaml`` writes)."""
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook
    from playwright.sync_api import sync_playwright

    from distilvpr_lib.batch import Grid, run_batch
    from distilvpr_lib.config import PROFILE_GRIDS

    _skip_without_browser()
    root = tmp_path / "root"
    (root / "data").mkdir(parents=True)
    (root / "data" / "smoke").symlink_to(smoke_dataset, target_is_directory=True)  # the read-only session dataset
    names = ("02_teacher_training", "03_distillation", "04_ablation_analysis")
    for name in names:
        nb = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / f"{name}.ipynb")), {"profile": "smoke"})
        nbformat.write(nb, root / f"{name}.ipynb")
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))  # the batch's kernels resolve the same defaults
    grid_name = Grid.load(REPO / PROFILE_GRIDS["smoke"]).name  # notebook 04's default batch folder: runs/<name>
    grid = Grid(name=grid_name, notebook=REPO / "notebooks" / "03_distillation.ipynb", seeds=[0],
                base={"profile": "smoke", "epochs": 1},
                variations=[{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}])

    states: dict[str, dict] = {}
    settings = {"@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"}}  # every cell in the page
    with _lab_server(root, tmp_path, settings) as lab, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            for name in names:
                if name == "04_ablation_analysis":  # its batch needs the teacher notebook 02 trained
                    summary = run_batch(grid, out_root=root / "runs", workers=1, progress=False)
                    assert [o.status for o in summary.outcomes] == ["ok", "ok"], [o.error for o in summary.outcomes]
                states[name] = _run_in_lab(browser, lab, name, tmp_path)
        finally:
            browser.close()

    for name, state in states.items():
        assert not state["errors"], f"{name} failed in JupyterLab: {state['errors']}"
        assert state["ran"] == state["code"], f"{name}: {state['ran']} of {state['code']} code cells ran"
        assert state["images"] >= _unconditional_figures(name) >= 1, f"{name}: {state['images']} figures"
        assert state["shown"] == state["images"], f"{name}: {state['shown']} of {state['images']} figures displayed"
        assert state["path_outputs"] == 0, f"{name} shows a path where a figure belongs"
    assert (root / "teacher_weights" / "smoke" / "teacher.pt").is_file()  # 02's default folder, used by 03
    assert (root / "runs" / "distill-smoke" / "student.pt").is_file()
    assert (root / "runs" / grid_name / "ablation_bars.png").is_file()  # 04 saves beside the batch too
