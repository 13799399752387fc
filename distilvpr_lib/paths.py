"""Where relative paths point: the one rule for every notebook path parameter.

A notebook runs the same from the project root (papermill, ``make demo``, ``distilvpr batch``)
and from ``notebooks/`` (JupyterLab starts its kernels in the notebook's folder): every path
parameter goes through :func:`project_path`, which resolves relative paths against the
*project root*, never against the kernel's working folder.

This module imports nothing from the rest of the library (it is the bottom layer, beside
``config``).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the project root explicitly (for an installed, non-editable copy
#: of the library used with notebooks kept elsewhere).
PROJECT_ROOT_ENV = "DISTILVPR_PROJECT_ROOT"

#: Environment variable naming the folder of the real fixtures (``oxford_dh3d/``, ``boreas_poses/``).
REAL_DATA_ENV = "DISTILVPR_REAL_DATA"

#: The source checkout holding this package (``<root>/distilvpr_lib/paths.py``).
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def _is_project_root(folder: Path) -> bool:
    return (folder / "notebooks").is_dir() and (folder / "pyproject.toml").is_file()


def project_root() -> Path:
    """The workbench's root folder (the one holding ``notebooks/`` and ``pyproject.toml``).

    In order: ``$DISTILVPR_PROJECT_ROOT`` when set; the source checkout this package is imported
    from (the usual editable install); the nearest folder at or above the current one that looks
    like the project root; the current folder. Returns an absolute path.
    """
    explicit = os.environ.get(PROJECT_ROOT_ENV)
    if explicit:
        return Path(explicit).expanduser().resolve()
    if _is_project_root(_SOURCE_ROOT):
        return _SOURCE_ROOT
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if _is_project_root(folder):
            return folder
    return here


def project_path(path: str | os.PathLike[str] | None) -> Path | None:
    """Resolve a path parameter: absolute paths (``~`` expanded) are kept, relative ones are taken
    relative to :func:`project_root`; ``None`` and ``""`` give ``None`` (an unset optional path).

    >>> project_path("data/cpu") == project_root() / "data" / "cpu"
    True
    """
    if path is None or str(path) == "":
        return None
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    return project_root() / path


def real_data_dir() -> Path:
    """The real fixtures folder: ``$DISTILVPR_REAL_DATA`` when set, else ``shared/data/real`` beside the
    project root (``<project root>/../shared/data/real``). The folder may not exist (the caller checks)."""
    explicit = os.environ.get(REAL_DATA_ENV)
    if explicit:
        return Path(explicit).expanduser()
    return project_root().parent / "shared" / "data" / "real"
