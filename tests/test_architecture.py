"""The library reads in one direction: import-linter's contracts (pyproject.toml ``[tool.importlinter]``,
drawn in docs/INTERFACES.md), no module-level ``__getattr__`` re-exports, no private name imported
across modules; and its modules stay near 500 lines (the longer ones are listed with their reason)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "distilvpr_lib"
#: Trees whose imports of the library are checked for private names.
CHECKED_TREES = ("distilvpr_lib", "tests", "benchmarks", "scripts")


def _python_files(*trees: str) -> list[Path]:
    return sorted(p for tree in trees for p in (ROOT / tree).rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    """The absolute module of a (possibly relative) ``from X import ...`` in ``path``."""
    if not node.level:
        return node.module or ""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_import_contracts_hold() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, f"import-linter contracts broken:\n{run.stdout}\n{run.stderr}"
    assert "broken" not in run.stdout.split("Contracts:")[-1].split(",")[0]  # "Contracts: N kept, 0 broken."
    assert "0 broken" in run.stdout


def test_no_module_level_getattr() -> None:
    offenders = [str(p.relative_to(ROOT)) for p in _python_files("distilvpr_lib")
                 if any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in ast.parse(p.read_text()).body)]
    assert not offenders, f"module-level __getattr__ (lazy re-exports) in {offenders}: import from the defining module"


def test_no_private_name_imported_across_modules() -> None:
    found = set()
    for path in _python_files(*CHECKED_TREES):
        here = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _absolute(node, path)
            if not source.startswith("distilvpr_lib") or source == here:
                continue
            rel = str(path.relative_to(ROOT))
            for alias in node.names:
                if _is_private(alias.name):
                    found.add((rel, source, alias.name))
            # a private module (``viz._common``) is internal to its package
            private = [i for i, part in enumerate(source.split(".")) if _is_private(part)]
            if private and not (here + ".").startswith(".".join(source.split(".")[: private[0]]) + "."):
                found.add((rel, source, "(private module)"))
    assert not found, "private names imported across modules (make them public or keep them in one module): " + \
        "; ".join(f"{f}: from {m} import {n}" for f, m, n in sorted(found))


#: A module of the library stays near this many lines (issue 13: one concern per module).
MAX_MODULE_LINES = 520
#: The modules allowed to be longer, and why (each is one concern that has not been split yet).
LONG_MODULES: dict[str, str] = {
    "distilvpr_lib/data/synth/world.py": "the procedural city (streets, blocks, buildings, trees, seasons)",
    "distilvpr_lib/data/synth/camera.py": "the software camera renderer (ray casting, shading, sky, noise)",
    "distilvpr_lib/models/sparse/torch_backend.py": "the pure-PyTorch sparse convolution backend",
    "distilvpr_lib/engine/train/distributed.py": "torch.distributed support (contexts, gathers, global batch norm)",
    "distilvpr_lib/config.py": "the one source of defaults: the config dataclasses, the profiles, overrides, method names",
}


def test_modules_stay_small() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in _python_files("distilvpr_lib")}
    too_long = {path: n for path, n in sizes.items() if n > MAX_MODULE_LINES and path not in LONG_MODULES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concern): {too_long}"
    stale = [path for path in LONG_MODULES if sizes.get(path, 0) <= MAX_MODULE_LINES]
    assert not stale, f"no longer long, drop them from LONG_MODULES: {stale}"


def test_notebooks_import_the_analysis_from_one_module() -> None:
    """The notebooks take what they analyse from one module, ``distilvpr_lib.analysis.workbook``, never from the
    analysis layer's other modules; every name there is its home module's."""
    import importlib
    import json
    import re

    import distilvpr_lib.analysis.workbook as analysis

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        source = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
        modules = set(re.findall(r"distilvpr_lib\.analysis(?:\.\w+)?", source))
        assert modules <= {"distilvpr_lib.analysis.workbook"}, f"{path.name} imports {sorted(modules)}"
    for module, names in analysis.HOMES.items():
        home = importlib.import_module(f"distilvpr_lib.analysis.{module}")
        for name in names:
            assert getattr(analysis, name) is getattr(home, name), name
    assert sorted(analysis.__all__) == sorted(n for names in analysis.HOMES.values() for n in names)
