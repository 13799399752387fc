"""The committed notebooks are the source: clean, parameterised, short, on the public API, and kept so by the
git filter; and every notebook runs from ``notebooks/`` (where JupyterLab starts its kernels).

The static checks read all six notebooks (milliseconds). The run (marked ``notebooks``/``slow``) executes all
six through papermill with ``cwd=notebooks/`` at the smoke profile, with relative path parameters, and checks
that everything lands under the project root and nothing under ``notebooks/``.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))

#: Longest code cell (lines) and longest line; the parameters cell may be a little longer.
MAX_CELL_LINES = 12
MAX_PARAMETER_LINES = 14
MAX_LINE_CHARS = 120


def _notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _code_cells(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if c.cell_type == "code"]


def _python(source: str) -> str:
    """Cell source without IPython magics and shell escapes (which are not Python)."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _parameters(nb: nbformat.NotebookNode) -> dict[str, ast.expr]:
    tree = ast.parse(_code_cells(nb)[0].source)
    params = {}
    for node in tree.body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name), \
            f"the parameters cell holds only plain assignments, found: {ast.unparse(node)}"
        params[node.targets[0].id] = node.value
    return params


def test_the_six_notebooks_are_there() -> None:
    assert NOTEBOOKS == ["01_data_exploration", "02_teacher_training", "03_distillation", "04_ablation_analysis",
                         "05_retrieval_browser", "06_benchmark_report"]
    assert not (REPO / "scripts" / "build_notebooks.py").exists(), "the notebooks are the source, not a builder"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_saved_without_outputs_or_execution_counts(name: str) -> None:
    nb = _notebook(name)
    nbformat.validate(nb)
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, f"{name}: cell {cell.id} was saved executed"
    assert "widgets" not in nb.metadata, f"{name}: widget state saved"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_first_code_cell_is_the_only_parameters_cell_and_has_out(name: str) -> None:
    cells = _code_cells(_notebook(name))
    tagged = [i for i, c in enumerate(cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged == [0], f"{name}: code cells tagged 'parameters': {tagged} (want only the first)"
    assert "out" in _parameters(_notebook(name)), f"{name}: no 'out' parameter (the batch runner sets it)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_papermill_reads_every_parameter(name: str) -> None:
    """papermill's own parser (``papermill --help-notebook``, its type checks) must see every parameter: a comment
    it cannot parse (an ``=`` in it) drops that parameter and every run warns "Passed unknown parameter"."""
    from papermill.translators import PythonTranslator

    nb = _notebook(name)
    seen = {p.name for p in PythonTranslator.inspect({"source": _code_cells(nb)[0].source})}
    assert set(_parameters(nb)) <= seen, f"{name}: papermill cannot parse {sorted(set(_parameters(nb)) - seen)}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_parameter_is_used(name: str) -> None:
    nb = _notebook(name)
    used = {node.id for cell in _code_cells(nb)[1:] for node in ast.walk(ast.parse(_python(cell.source)))
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load)}
    unused = sorted(set(_parameters(nb)) - used)
    assert not unused, f"{name}: parameters never read by the notebook: {unused}"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_take_config_defaults_from_the_profile(name: str) -> None:
    """A parameter handed to ``notebook_config`` as a config field defaults to ``None`` (the profile's value),
    so no second copy of a default (seed, curvature, epochs, ...) lives in the notebook."""
    from distilvpr_lib.config import ExperimentConfig, apply_overrides

    nb = _notebook(name)
    params = _parameters(nb)
    mapped = {}
    for cell in _code_cells(nb)[1:]:
        for node in ast.walk(ast.parse(_python(cell.source))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "notebook_config" and len(node.args) > 1:
                assert isinstance(node.args[1], ast.Dict), f"{name}: notebook_config settings must be a dict literal"
                for key, value in zip(node.args[1].keys, node.args[1].values):
                    mapped[ast.literal_eval(key)] = value.id if isinstance(value, ast.Name) else None
    for field, param in mapped.items():
        apply_overrides(ExperimentConfig(), {field: None})  # a real config field (KeyError otherwise)
        assert param in params, f"{name}: {field} is set from {param!r}, which is not a parameter"
        default = ast.literal_eval(params[param])
        assert default is None, f"{name}: parameter {param} = {default!r} copies the default of {field}; use None"
    if name in {"01_data_exploration", "02_teacher_training", "03_distillation"}:
        assert {"data.dataset_dir", "train.seed" if name != "01_data_exploration" else "synth.seed"} <= set(mapped)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_are_short(name: str) -> None:
    for index, cell in enumerate(_code_cells(_notebook(name))):
        lines = cell.source.splitlines()
        limit = MAX_PARAMETER_LINES if index == 0 else MAX_CELL_LINES
        assert len(lines) <= limit, f"{name}: cell {cell.id} has {len(lines)} lines (> {limit}): move logic into the library"
        long = [line for line in lines if len(line) > MAX_LINE_CHARS]
        assert not long, f"{name}: cell {cell.id} has lines over {MAX_LINE_CHARS} characters: {long[0][:60]}..."


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_cells_use_the_public_api_only(name: str) -> None:
    for cell in _code_cells(_notebook(name)):
        for node in ast.walk(ast.parse(_python(cell.source))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom):
                names = (node.module or "").split(".") + [a.name for a in node.names]
            elif isinstance(node, ast.Import):
                names = [part for a in node.names for part in a.name.split(".")]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            elif isinstance(node, ast.Name):
                names = [node.id]
            private = [n for n in names if n.startswith("_") and n != "_"]
            assert not private, f"{name}: cell {cell.id} uses private names {private}: {ast.unparse(node)[:80]}"


def _bootstrap_kernel() -> tuple[str, str]:
    """(name, display name) of the kernel scripts/bootstrap.sh installs."""
    text = (REPO / "scripts" / "bootstrap.sh").read_text()
    match = re.search(r'ipykernel install[^\n]*--name (\S+) --display-name "([^"]+)"', text)
    assert match, "scripts/bootstrap.sh no longer installs a named kernel with ipykernel"
    return match.group(1), match.group(2)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_kernelspec_is_the_kernel_bootstrap_installs(name: str) -> None:
    """JupyterLab rewrites a notebook's kernelspec and language_info to the running kernel's and marks the
    notebook changed when they differ; the committed metadata must be exactly the project kernel's."""
    from ipykernel.ipkernel import IPythonKernel

    kernel_name, display_name = _bootstrap_kernel()
    meta = _notebook(name).metadata
    assert meta.kernelspec == {"name": kernel_name, "display_name": display_name, "language": "python"}
    expected = dict(IPythonKernel.language_info)
    committed = dict(meta.language_info)
    # The patch version follows the machine's Python 3.11; the browser test checks the full match on open.
    assert committed.pop("version").split(".")[:2] == expected.pop("version").split(".")[:2]
    assert committed == expected


def test_installed_kernel_is_the_one_the_notebooks_name() -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    kernel_name, display_name = _bootstrap_kernel()
    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        pytest.skip(f"kernel {kernel_name!r} not installed (scripts/bootstrap.sh installs it)")
    if Path(spec.resource_dir).resolve().is_relative_to(Path(sys.prefix).resolve()):
        assert spec.display_name == display_name and spec.language == "python"


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)


def test_committed_notebooks_are_what_the_git_filter_makes_of_them() -> None:
    """``.gitattributes`` routes notebooks through nbstripout; the bootstrap configures it; running the
    configured filter over each notebook changes nothing (so saving from JupyterLab and committing is clean)."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    attrs = _git("check-attr", "filter", "diff", "--", *[f"notebooks/{n}.ipynb" for n in NOTEBOOKS]).stdout
    assert attrs.count("filter: nbstripout") == len(NOTEBOOKS) and attrs.count("diff: ipynb") == len(NOTEBOOKS), attrs
    clean = _git("config", "--get", "filter.nbstripout.clean").stdout.strip()
    assert "nbstripout" in clean, "git filter 'nbstripout' is not configured: run scripts/bootstrap.sh"
    for name in NOTEBOOKS:
        path = NOTEBOOK_DIR / f"{name}.ipynb"
        proc = subprocess.run(shlex.split(clean), stdin=path.open("rb"), capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()[-2000:]
        assert proc.stdout == path.read_bytes(), f"{name}: the nbstripout filter would change the committed file"


def test_the_filter_strips_an_executed_notebook(tmp_path: Path) -> None:
    """The same filter command turns an executed copy back into the committed notebook."""
    if shutil.which("git") is None or _git("rev-parse", "--is-inside-work-tree").returncode != 0:
        pytest.skip("not a git checkout")
    clean = _git("config", "--get", "filter.nbstripout.clean").stdout.strip()
    assert "nbstripout" in clean, "git filter 'nbstripout' is not configured: run scripts/bootstrap.sh"
    path = NOTEBOOK_DIR / "04_ablation_analysis.ipynb"
    nb = nbformat.read(path, as_version=4)
    for count, cell in enumerate(_code_cells(nb), start=1):
        cell.execution_count = count
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text="x\n")]
    executed = tmp_path / "executed.ipynb"
    nbformat.write(nb, executed)
    proc = subprocess.run(shlex.split(clean), stdin=executed.open("rb"), capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == path.read_bytes()


# ---------------------------------------------------------------------------
# All five notebooks, run where JupyterLab runs them
# ---------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def _image_cells(nb: nbformat.NotebookNode) -> list[str]:
    """Sources of the code cells that hold an ``image/png`` output."""
    return [c.source for c in _code_cells(nb) if any("image/png" in o.get("data", {}) for o in c.outputs)]


def _assert_figures_shown(nb: nbformat.NotebookNode, name: str) -> None:
    """Every unconditional ``show_figure(...)`` call shows an image in its cell; no cell shows a path instead of a
    figure; no progress bar is a widget (its state is not saved: a copy would show it frozen at 0 %)."""
    for cell in _code_cells(nb):
        calls = [line for line in cell.source.splitlines() if line.startswith("show_figure(")]
        images = [o for o in cell.outputs if "image/png" in o.get("data", {})]
        assert len(images) >= len(calls), f"{name}: cell {cell.id} shows {len(images)} of its {len(calls)} figures"
        for output in cell.outputs:
            data = output.get("data", {})
            assert "PosixPath(" not in data.get("text/plain", ""), f"{name}: cell {cell.id} shows a path"
            assert "application/vnd.jupyter.widget-view+json" not in data, f"{name}: cell {cell.id} has a widget"


def _papermill_in_notebooks_folder(name: str, work: Path, params: dict) -> nbformat.NotebookNode:
    import yaml

    params_file = work / f"{name}.params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    executed = work / f"{name}.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / f"{name}.ipynb"), str(executed),
                           "-f", str(params_file), "--cwd", str(NOTEBOOK_DIR), "--no-progress-bar",
                           "--log-level", "WARNING", "--execution-timeout", "600"],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"papermill {name} (cwd notebooks/) failed:\n{proc.stderr[-4000:]}"
    return nbformat.read(executed, as_version=4)


@pytest.mark.slow
@pytest.mark.notebooks
def test_every_notebook_runs_from_the_notebooks_folder_with_relative_paths(smoke_dataset: Path,
                                                                           tmp_path: Path) -> None:
    import json

    from distilvpr_lib.batch import Grid, run_batch
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.benchmark import Benchmark

    before = _tree(NOTEBOOK_DIR)
    rel = Path("runs") / f"test-notebooks-{uuid.uuid4().hex[:8]}"  # relative to the project root
    root = REPO / rel
    root.mkdir(parents=True)
    try:
        (root / "data").symlink_to(smoke_dataset, target_is_directory=True)  # read-only session dataset
        dataset, teacher = str(rel / "data"), str(rel / "teacher")
        executed: dict[str, nbformat.NotebookNode] = {}
        executed["01_data_exploration"] = _papermill_in_notebooks_folder("01_data_exploration", tmp_path, {
            "dataset": dataset, "generate": False, "realism_limit": 20, "out": str(rel / "01")})
        executed["02_teacher_training"] = _papermill_in_notebooks_folder("02_teacher_training", tmp_path, {
            "dataset": dataset, "profile": "smoke", "epochs": 1, "teacher_dir": teacher, "out": str(rel / "02")})
        grid = Grid(name="batch", notebook=NOTEBOOK_DIR / "03_distillation.ipynb", seeds=[0],
                    base={"dataset": dataset, "teacher": teacher, "profile": "smoke", "epochs": 1},
                    variations=[{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}])
        summary = run_batch(grid, out_root=root, progress=False)  # the batch runner also starts kernels in notebooks/
        assert [o.status for o in summary.outcomes] == ["ok", "ok"], [o.error for o in summary.outcomes]
        executed["03_distillation"] = nbformat.read(root / "batch" / "distilvpr__seed0" / "notebook.ipynb", 4)
        # a per-run record of seed 1, made elsewhere (no folder here): its rows join the tables
        (root / "recorded.csv").write_text("variation,seed,best_epoch,val_AR@1,test_AR@1,test_AR@5,test_AR@1%\n"
                                           "nokd,1,1,10.0,9.0,30.0,20.0\ndistilvpr,1,1,12.0,11.0,31.0,21.0\n")
        executed["04_ablation_analysis"] = _papermill_in_notebooks_folder("04_ablation_analysis", tmp_path, {
            "batch": str(rel / "batch"), "teacher": teacher, "out": str(rel / "04"), "relation_seeds": 0,
            "recorded_runs": str(rel / "recorded.csv")})
        executed["05_retrieval_browser"] = _papermill_in_notebooks_folder("05_retrieval_browser", tmp_path, {
            "dataset": dataset, "models": {"no-KD": str(rel / "batch" / "nokd__seed0")},
            "results": {"teacher": str(rel / "teacher" / "test_results.npz")},
            "n_queries": 1, "top_k": 3, "interactive": False, "out": str(rel / "05")})
        # 06 over a records folder without rows (tests/test_benchmark.py runs it over rows): it says so
        report = _papermill_in_notebooks_folder("06_benchmark_report", tmp_path, {
            "spec": "ablations/benchmark_smoke.yaml", "records": str(rel / "records"), "out": str(rel / "06")})
        assert "The benchmark has no rows yet" in str(report.cells), "06 does not say that no rows exist"

        # every figure inline (02, 03 and 04 also save them), no path or frozen bar shown in its place
        for name, nb in executed.items():
            _assert_figures_shown(nb, name)
        assert len(_image_cells(executed["02_teacher_training"])) == 2  # training curves, embedding projection
        assert len(_image_cells(executed["03_distillation"])) == 1  # the training curves
        shown = "\n".join(_image_cells(executed["04_ablation_analysis"]))
        assert all(f in shown for f in ("ablation_bars", "forest_plot", "epoch_curves")), shown
        assert len(_image_cells(executed["01_data_exploration"])) >= 4

        for step in ("01", "02", "04", "05"):
            assert (root / step / "metrics.json").is_file(), f"notebook {step} wrote no metrics under {rel}"
        # 01: every figure, split sizes and the premise read back (realism needs the real fixtures)
        figures = ["map", "same_place_across_runs", "cloud_and_image", "split_sizes", "premise"]
        if (REPO.parent / "shared" / "data" / "real" / "oxford_dh3d").is_dir():  # the default real_data
            figures += ["realism_table", "real_vs_generated"]
        for figure in figures:
            assert (root / "01" / f"{figure}.png").read_bytes().startswith(b"\x89PNG"), figure
        explored = json.loads((root / "01" / "metrics.json").read_text())
        benchmark = Benchmark.load(smoke_dataset)
        assert explored["split_sizes"]["training"] == len(benchmark.training_tuples)
        assert {row["run"] for row in explored["premise"]} <= set(benchmark.run_names)
        # 02-04: the teacher folder, the batch and the ablation table
        assert (root / "02" / "teacher_curves.png").is_file() and (root / "04" / "ablation_bars.png").is_file()
        # 05: a model folder and a results file, both given relative; recalls equal the stored ones
        browsed = json.loads((root / "05" / "metrics.json").read_text())
        assert set(browsed["models"]) == {"teacher", "no-KD"}
        stored = json.loads((root / "batch" / "nokd__seed0" / "metrics.json").read_text())["test"]
        assert browsed["models"]["no-KD"]["AR@1"] == pytest.approx(stored["AR@1"])
        assert Path(browsed["rendered"][0]["retrieval_png"]).resolve().is_relative_to(root / "05")
        teacher_config = json.loads((root / "teacher" / "config.json").read_text())
        assert teacher_config["profile"] == "smoke" and teacher_config["train"]["epochs"] == 1
        assert Path(teacher_config["data"]["dataset_dir"]) == root / "data"
        assert teacher_config["train"]["seed"] == profile_config("smoke").train.seed  # the default: the profile's
        assert json.loads((root / "04" / "metrics.json").read_text())["n_ok"] == 4  # 2 run here + 2 recorded
        # 04: the study outputs (per-run CSV, paired table, relation AUC of the teacher heads and the students)
        import pandas as pd

        per_run = pd.read_csv(root / "04" / "study_runs.csv")
        assert set(per_run["variation"]) == {"nokd", "distilvpr"} and "test_AR@1" in per_run
        assert sorted(per_run["seed"]) == [0, 0, 1, 1]  # the recorded seed 1 rows kept in the new record
        assert per_run.set_index(["variation", "seed"]).loc[("distilvpr", 1), "test_AR@1"] == 11.0
        study = pd.read_csv(root / "04" / "study_table.csv", index_col=0)
        assert study.loc["distilvpr", "seeds"] == 2 and study.loc["nokd", "seeds"] == 2  # paired over both seeds
        relations = pd.read_csv(root / "04" / "relation_auc.csv", index_col=0)  # every seed (relation_seeds 0)
        assert {"teacher fused", "teacher cloud-only", "teacher image-only", "nokd seed0",
                "distilvpr seed0"} <= set(relations.index)
        assert relations[["euclidean", "cosine", "hyperbolic", "cosine_near"]].stack().between(0, 1).all()
        assert relations[["AR@1_unseen", "AR@1_seen"]].stack().between(0, 100).all()
        means = pd.read_csv(root / "04" / "relation_auc_mean.csv", index_col=0)
        assert {"nokd", "distilvpr"} <= set(means.index) and (means.loc["nokd", "seeds"] == 1)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    after = _tree(NOTEBOOK_DIR)
    assert after == before, f"written under notebooks/: {sorted(set(after) ^ set(before))}"


# ---------------------------------------------------------------------------
# Defaults that follow the profile (fast)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_parameters_name_no_profile_specific_folder(name: str) -> None:
    """A folder default that belongs to one profile (``teacher_weights/cpu``, ``runs/distill-cpu``, ``data/cpu``)
    would be wrong at every other profile: such defaults are ``None`` and come from ``config.profile_folders``."""
    from distilvpr_lib.config import PROFILES

    for param, value in _parameters(_notebook(name)).items():
        for node in ast.walk(value):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and param != "profile":
                parts = re.split(r"[/_\-.]", node.value)
                assert not set(parts) & set(PROFILES), f"{name}: parameter {param} = {node.value!r} names a profile"


@pytest.mark.parametrize("name", ["02_teacher_training", "03_distillation", "04_ablation_analysis",
                                  "05_retrieval_browser"])
def test_folder_parameters_default_to_none_and_profile_is_a_parameter(name: str) -> None:
    params = _parameters(_notebook(name))
    assert "profile" in params
    folders = {"teacher_dir", "teacher", "out", "batch", "dataset"} & set(params)
    assert folders and all(ast.literal_eval(params[p]) is None for p in folders), folders


def test_each_profile_grid_makes_the_default_batch_folder() -> None:
    """Notebook 04's default batch folder is the one ``distilvpr batch <the profile's grid>`` writes, and that
    grid runs notebook 03 at that profile."""
    from distilvpr_lib.batch import Grid
    from distilvpr_lib.config import PROFILE_GRIDS, PROFILES, profile_folders, profile_path
    from distilvpr_lib.paths import project_path

    assert set(PROFILE_GRIDS) <= set(PROFILES)
    for profile in PROFILES:
        folders = profile_folders(profile)
        assert folders.teacher == f"teacher_weights/{profile}" and profile in folders.distill_run
        if profile not in PROFILE_GRIDS:
            assert folders.batch is None
            with pytest.raises(ValueError, match=f"profile '{profile}' has no default batch folder"):
                profile_path(profile, "batch")
            continue
        grid = Grid.load(project_path(PROFILE_GRIDS[profile]))
        assert folders.batch == f"runs/{grid.name}"
        assert profile_path(profile, "batch") == REPO / "runs" / grid.name
        assert grid.base["profile"] == profile and grid.notebook.name == "03_distillation.ipynb"


def test_profile_path_prefers_the_given_folder(tmp_path: Path) -> None:
    from distilvpr_lib.config import profile_path

    assert profile_path("smoke", "teacher", str(tmp_path)) == tmp_path
    assert profile_path("smoke", "teacher", "") is None  # '' = none
    assert profile_path("smoke", "teacher_run") == REPO / "runs" / "teacher-smoke"
    missing = f"no-such-profile-folder-{uuid.uuid4().hex[:6]}"
    assert profile_path("smoke", "teacher", missing, existing=True) == REPO / missing  # given: kept as is
    with pytest.raises(KeyError, match="unknown folder kind"):
        profile_path("smoke", "nothing")


def test_config_table_lists_only_what_differs_from_the_profile() -> None:
    from distilvpr_lib.analysis.report import config_table
    from distilvpr_lib.config import config_changes, notebook_config, profile_config

    same = notebook_config("smoke", {"data.dataset_dir": None, "train.epochs": None})
    assert config_changes(same) == {}  # the resolved (absolute) dataset path names the profile's folder
    cfg = notebook_config("smoke", {"train.epochs": 1, "distill.curvature": 0.5}, {"train.milestones": [1, 2]})
    assert config_changes(cfg) == {"distill.curvature": (0.1, 0.5), "train.epochs": (2, 1),
                                   "train.milestones": ((1,), (1, 2))}
    table = config_table(cfg)
    assert list(table.index) == ["distill.curvature", "train.epochs", "train.milestones"]
    assert table.loc["train.epochs"].tolist() == ["2", "1"]
    assert config_changes(cfg, profile="cpu")["train.epochs"] == (12, 1)  # against another profile
    assert config_changes(profile_config("cpu"), profile="smoke")["data.dataset_dir"] == ("data/smoke", "data/cpu")


def test_finished_runs_are_the_profile_folders_with_test_results(tmp_path: Path, monkeypatch) -> None:
    from distilvpr_lib.analysis.run_results import finished_runs
    from distilvpr_lib.paths import PROJECT_ROOT_ENV

    root = tmp_path / "project"
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "ablations").mkdir()
    (root / "ablations" / "smoke.yaml").write_text("name: smokegrid\n")
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(root))
    assert finished_runs("smoke") == {}  # nothing finished: nothing to browse (notebook 05 says so)
    for folder in ("teacher_weights/smoke", "runs/smokegrid/nokd__seed0", "runs/smokegrid/nokd__seed1",
                   "runs/smokegrid/broken__seed0", "runs/distill-smoke"):
        (root / folder).mkdir(parents=True)
    for folder in ("teacher_weights/smoke", "runs/smokegrid/nokd__seed0", "runs/smokegrid/nokd__seed1"):
        (root / folder / "test_results.npz").write_bytes(b"")
    assert finished_runs("smoke") == {"teacher": root / "teacher_weights/smoke",
                                      "nokd": root / "runs/smokegrid/nokd__seed0"}


def test_show_figure_saves_and_shows_only_in_a_kernel(tmp_path: Path, monkeypatch) -> None:
    from matplotlib.figure import Figure

    from distilvpr_lib.viz import show_figure

    fig = Figure()
    fig.add_subplot().plot([0, 1])
    shown: list = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.setattr("distilvpr_lib.viz._common.in_notebook", lambda: False)
    assert show_figure(fig, tmp_path / "a" / "f.png") is None
    assert (tmp_path / "a" / "f.png").read_bytes().startswith(b"\x89PNG") and shown == []
    monkeypatch.setattr("distilvpr_lib.viz._common.in_notebook", lambda: True)
    show_figure(fig, tmp_path / "g.png")
    assert len(shown) == 1 and shown[0].data == (tmp_path / "g.png").read_bytes()


def test_progress_bars_are_off_in_a_kernel_without_a_jupyter_frontend(monkeypatch) -> None:
    from distilvpr_lib import progress

    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    monkeypatch.setattr(progress, "_in_kernel", lambda: False)
    assert progress.progress_mode() == "text"  # the command line
    monkeypatch.setattr(progress, "_in_kernel", lambda: True)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert progress.progress_mode() == "off"  # papermill / nbclient: nobody renders a widget
    assert progress.progress_bar(range(3)).disable
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/02_teacher_training.ipynb")
    assert progress.progress_mode() == "widget"  # JupyterLab
    monkeypatch.setenv(progress.PROGRESS_ENV, "text")
    assert progress.progress_mode() == "text"


@pytest.mark.slow
@pytest.mark.notebooks
def test_browser_opens_without_parameters_when_nothing_is_finished(tmp_path: Path) -> None:
    """Notebook 05 with ``models`` left empty and no finished run of the profile: a one-line message, no error
    (a kernel start; nothing is trained or evaluated)."""
    from distilvpr_lib.paths import PROJECT_ROOT_ENV

    root = tmp_path / "project"  # an empty project: no teacher, run or batch of the profile
    (root / "notebooks").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    executed = tmp_path / "05.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(NOTEBOOK_DIR / "05_retrieval_browser.ipynb"),
                           str(executed), "-p", "profile", "smoke", "--cwd", str(NOTEBOOK_DIR), "--no-progress-bar",
                           "--log-level", "WARNING", "--execution-timeout", "300"],
                          capture_output=True, text=True, env=dict(os.environ, **{PROJECT_ROOT_ENV: str(root)}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = "".join(o.get("text", "") for c in _code_cells(nbformat.read(executed, 4)) for o in c.outputs)
    assert "nothing to browse: no finished run of profile 'smoke'" in text
    assert (root / "runs" / "browser-smoke" / "metrics.json").is_file()
