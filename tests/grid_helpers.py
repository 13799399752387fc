"""Grid files, toy notebooks and launchers for the batch tests: one way to do each (``from grid_helpers import ...``).

:func:`write_grid` writes a grid YAML (the format of ``ablations/*.yaml``, docs/GRIDS.md); :func:`write_notebook`
writes a notebook with a ``parameters`` cell, as papermill and :func:`distilvpr_lib.grid_checks.check_grid` read it;
:func:`batch_command` and :func:`run_launchers_at_once` run ``distilvpr batch`` of this checkout as subprocesses.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
import yaml

REPO = Path(__file__).resolve().parents[1]

#: The distillation notebook, as the committed grids name it (relative to the project root).
NOTEBOOK_03 = "notebooks/03_distillation.ipynb"


def _plain(value: Any) -> Any:
    """``value`` with paths as strings and tuples as lists (what ``yaml.safe_dump`` writes)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flow(value: Any) -> str:
    """One YAML value on one line: a ``str`` is YAML text already, written as it is; anything else is dumped."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def write_grid(path: Path, notebook: str | Path = NOTEBOOK_03, variations: str | Sequence[Mapping[str, Any]] = (),
               *, base: str | Mapping[str, Any] | None = None, seeds: str | Sequence[int] = (0,),
               name: str = "toy", **extra: Any) -> Path:
    """Write a grid file to ``path`` and return ``path``.

    ``base``, ``variations`` and ``seeds`` are Python values (dumped as YAML), or YAML text written as it is, for
    what a mapping cannot hold (``"  - {name: nokd, method: nokd, method: rkd}\\n"``: a key given twice).
    ``name`` and ``notebook`` are written as they are. ``extra`` adds top-level keys (``product={"y": [1, 2]}``).
    """
    lines = [f"name: {name}", f"notebook: {notebook}"]
    if base is not None:
        lines.append(f"base: {_flow(base)}")
    lines.append(f"seeds: {_flow(list(seeds) if not isinstance(seeds, str) else seeds)}")
    if isinstance(variations, str):
        lines.append("variations:\n" + variations.rstrip("\n"))
    elif variations:
        lines.append("variations:")
        lines += [f"  - {_flow(dict(v))}" for v in variations]
    lines += [f"{key}: {_flow(value)}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_notebook(path: Path, parameters: str, body: str) -> Path:
    """Write a notebook to ``path``: a cell tagged ``parameters`` (``parameters``: one assignment a line) and one
    code cell ``body``, with a Python 3 kernel; return ``path``."""
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def smoke_base(dataset: Path, teacher: Path | None = None, epochs: int = 1) -> dict[str, Any]:
    """A grid ``base`` for notebook 03 at the smoke profile: ``dataset`` (and ``teacher``), ``epochs`` epochs."""
    base: dict[str, Any] = {"dataset": str(dataset), "profile": "smoke", "epochs": epochs}
    if teacher is not None:
        base["teacher"] = str(teacher)
    return base


def batch_command(grid: Path, out: Path) -> tuple[list[str], dict[str, str]]:
    """``distilvpr batch GRID --out OUT`` of this checkout as a subprocess runs it: the command and its environment
    (``PYTHONPATH`` led by the checkout)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return [sys.executable, "-m", "distilvpr_lib.cli", "batch", str(grid), "--out", str(out)], env


def run_launchers_at_once(grid: Path, out: Path, count: int = 2, timeout: float = 900) -> list[int]:
    """Start ``count`` launchers (:func:`batch_command`) on one grid folder at once and wait for them; assert that
    every one exited 0 and none printed ``FAILED``.

    Returns:
        Per launcher, how many runs it executed itself (the ``N succeeded`` of its summary line: a run another
        launcher claimed is not counted), in start order.
    """
    command, env = batch_command(grid, out)
    launchers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for _ in range(count)]
    results = [p.communicate(timeout=timeout) for p in launchers]
    assert [p.returncode for p in launchers] == [0] * count, [e[-3000:] for _, e in results]
    outputs = [o for o, _ in results]
    assert "FAILED" not in "".join(outputs), outputs
    counts = [re.search(r": (\d+) succeeded", o) for o in outputs]
    assert all(counts), outputs
    return [int(m.group(1)) for m in counts if m]
