"""Path parameters resolve against the project root, whatever the working folder (JupyterLab: notebooks/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distilvpr_lib.paths import PROJECT_ROOT_ENV, project_path, project_root

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def test_project_root_is_the_checkout_and_relative_paths_resolve_against_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    assert project_root() == REPO
    for cwd in (REPO, REPO / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        assert project_path("data/cpu") == REPO / "data" / "cpu"
        assert project_path(Path("runs")) == REPO / "runs"
    assert project_path(tmp_path / "x") == tmp_path / "x"
    assert project_path("~/x") == Path.home() / "x"
    assert project_path(None) is None and project_path("") is None


def test_project_root_can_be_set_explicitly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROJECT_ROOT_ENV, str(tmp_path))
    assert project_root() == tmp_path.resolve()
    assert project_path("data/cpu") == tmp_path.resolve() / "data" / "cpu"


# The parameters cell and the set-up cell of every notebook, executed as JupyterLab does (kernel in
# notebooks/), must turn each relative path parameter into a path under the project root.
_RESOLVE = r"""
import json, sys
from pathlib import Path
import nbformat
out = {}
for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    namespace = {}
    for source in code[:2]:  # parameters, then the set-up cell (imports + path resolution)
        exec("\n".join(l for l in source.splitlines() if not l.startswith("%")), namespace)
    params = {}
    exec(code[0], params)
    resolved = {k: [params[k] if isinstance(params[k], (str, type(None))) else None, repr(namespace[k])]
                for k in params if not k.startswith("__")}
    if "cfg" in namespace:  # notebooks 01-03: the dataset folder is a config field (the profile's by default)
        resolved["cfg.data.dataset_dir"] = [None, repr(Path(namespace["cfg"].data.dataset_dir))]
    out[Path(path).stem] = resolved
print(json.dumps(out))
"""

#: Parameters that name files or folders, by notebook.
PATH_PARAMETERS = {
    "01_data_exploration": ["dataset", "out", "real_data", "cfg.data.dataset_dir"],
    "02_teacher_training": ["cfg.data.dataset_dir", "teacher_dir", "out"],
    "03_distillation": ["cfg.data.dataset_dir", "teacher", "out"],
    "04_ablation_analysis": ["batch", "out"],
    "05_retrieval_browser": ["cfg.data.dataset_dir", "out"],
    "06_benchmark_report": ["out"],
}


@pytest.mark.slow
def test_every_notebook_resolves_its_path_parameters_from_the_notebooks_folder(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    proc = subprocess.run([sys.executable, "-c", _RESOLVE, *map(str, NOTEBOOKS)], cwd=REPO / "notebooks",
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(resolved) == sorted(PATH_PARAMETERS)
    for name, params in PATH_PARAMETERS.items():
        for param in params:
            default, value = resolved[name][param]
            assert value.startswith("PosixPath("), f"{name}: {param} = {value} is not resolved to a Path"
            path = Path(value.split("'")[1])
            assert path.is_absolute() and not path.resolve().is_relative_to(REPO / "notebooks"), (name, param, path)
            if default:  # a relative default is taken from the project root, not from notebooks/
                assert path == Path(os.path.normpath(REPO / default)) or path == REPO / default, (name, param, path)


def test_notebook_config_keeps_the_profile_for_none_and_resolves_path_fields(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distilvpr_lib.config import notebook_config, profile_config

    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    smoke = profile_config("smoke")
    cfg = notebook_config("smoke", {"train.seed": None, "train.epochs": 1, "data.image_dir": None},
                          {"train.batch_size": 8})
    assert cfg.train.seed == smoke.train.seed and cfg.train.epochs == 1 and cfg.train.batch_size == 8
    assert cfg.data.dataset_dir == str(REPO / smoke.data.dataset_dir) and cfg.data.image_dir is None
    cfg = notebook_config("smoke", {"data.dataset_dir": tmp_path / "d", "data.image_dir": "imgs"})
    assert cfg.data.dataset_dir == str(tmp_path / "d") and cfg.data.image_dir == str(REPO / "imgs")
    with pytest.raises(KeyError):
        notebook_config("smoke", {"train.no_such_field": 1})


def test_a_grid_outside_the_checkout_says_where_its_relative_dataset_was_looked_for(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One rule for paths (docs/GRIDS.md): a grid's relative path is taken from the project root, and the error for
    a missing one says so, naming the root; an absolute path is reported as it is."""
    from distilvpr_lib.batch import preflight_grid
    from distilvpr_lib.errors import MissingDataError

    monkeypatch.delenv(PROJECT_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "mine").mkdir(parents=True)  # beside the grid: not where the grid's path points
    grid = tmp_path / "grid.yaml"
    grid.write_text("name: g\nnotebook: notebooks/03_distillation.ipynb\nseeds: [0]\n"
                    "base: {dataset: data/mine, profile: smoke}\nvariations:\n  - {name: a, method: nokd}\n")
    with pytest.raises(MissingDataError) as caught:
        preflight_grid(grid, tmp_path / "runs")
    message = str(caught.value)
    assert message.startswith(f"{REPO / 'data' / 'mine'}: dataset folder not found")
    assert f"the grid's dataset 'data/mine' is taken from the project root {REPO}, not from the grid's folder" \
        in message
    assert not (tmp_path / "runs").exists()  # nothing written
    grid.write_text(grid.read_text().replace("data/mine", str(tmp_path / "nowhere")))
    with pytest.raises(MissingDataError) as caught:
        preflight_grid(grid, tmp_path / "runs")
    assert str(caught.value) == f"{tmp_path / 'nowhere'}: dataset folder not found"
