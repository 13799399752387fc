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
        _papermill_in_notebooks_folder("01_data_exploration", tmp_path, {
            "dataset": dataset, "generate": False, "realism_limit": 20, "out": str(rel / "01")})
        _papermill_in_notebooks_folder("02_teacher_training", tmp_path, {
            "dataset": dataset, "profile": "smoke", "epochs": 1, "teacher_dir": teacher, "out": str(rel / "02")})
        grid = Grid(name="batch", notebook=NOTEBOOK_DIR / "03_distillation.ipynb", seeds=[0],
                    base={"dataset": dataset, "teacher": teacher, "profile": "smoke", "epochs": 1},
                    variations=[{"name": "nokd", "method": "nokd"}, {"name": "distilvpr", "method": "distilvpr"}])
        summary = run_batch(grid, out_root=root, progress=False)  # the batch runner also starts kernels in notebooks/
        assert [o.status for o in summary.outcomes] == ["ok", "ok"], [o.error for o in summary.outcomes]
        # a per-run record of seed 1, made elsewhere (no folder here): its rows join the tables
        (root / "recorded.csv").write_text("variation,seed,best_epoch,val_AR@1,test_AR@1,test_AR@5,test_AR@1%\n"
                                           "nokd,1,1,10.0,9.0,30.0,20.0\ndistilvpr,1,1,12.0,11.0,31.0,21.0\n")
        _papermill_in_notebooks_folder("04_ablation_analysis", tmp_path, {"batch": str(rel / "batch"),
                                                                          "teacher": teacher, "out": str(rel / "04"),
                                                                          "relation_seeds": 0,
                                                                          "recorded_runs": str(rel / "recorded.csv")})
        _papermill_in_notebooks_folder("05_retrieval_browser", tmp_path, {
            "dataset": dataset, "models": {"no-KD": str(rel / "batch" / "nokd__seed0")},
            "results": {"teacher": str(rel / "teacher" / "test_results.npz")},
            "n_queries": 1, "top_k": 3, "interactive": False, "out": str(rel / "05")})
        # 06 over a records folder without rows (tests/test_benchmark.py runs it over rows): it says so
        executed = _papermill_in_notebooks_folder("06_benchmark_report", tmp_path, {
            "spec": "ablations/benchmark_smoke.yaml", "records": str(rel / "records"), "out": str(rel / "06")})
        assert "No benchmark rows committed yet" in str(executed.cells), "06 does not say that no rows exist"

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
