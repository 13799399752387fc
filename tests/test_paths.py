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
    out[Path(path).stem] = {k: [params[k] if isinstance(params[k], (str, type(None))) else None, repr(namespace[k])]
                            for k in params if not k.startswith("__")}
print(json.dumps(out))
"""

#: Parameters that name files or folders, by notebook.
PATH_PARAMETERS = {
    "01_data_exploration": ["dataset", "out", "real_data"],
    "02_teacher_training": ["dataset", "teacher_dir", "out"],
    "03_distillation": ["dataset", "teacher", "out"],
    "04_ablation_analysis": ["batch", "out"],
    "05_retrieval_browser": ["dataset", "out"],
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
