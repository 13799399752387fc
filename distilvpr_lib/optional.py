"""The optional dependencies (MinkowskiEngine, faiss, playwright): one place for their import and install hint.

:func:`require` imports one or raises ``ImportError`` that says what needs it and how to install it;
:func:`is_available` checks without importing. This module imports nothing from the rest of the library
(bottom layer, beside ``config``).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

#: Module name -> how to install it (shown by :func:`require`).
INSTALL_HINTS: dict[str, str] = {
    "MinkowskiEngine": ("build and install it (CPU-only, a few minutes) with:\n"
                        "    .venv/bin/python scripts/build_minkowski.py\n"
                        "or use the pure-PyTorch backend: ModelConfig.sparse_backend = 'torch'."),
    "faiss": ("run `pip install faiss-cpu` (or install this package with the `faiss` extra: "
              "`pip install -e .[faiss]`), or use search='torch' / 'sklearn'."),
    "playwright": ("install the `dev` extra (`pip install -e .[dev]`) and Chromium "
                   "(`apt-get install chromium`; scripts/bootstrap.sh does both)."),
}


def install_hint(module: str) -> str:
    """How to install ``module`` (one of :data:`INSTALL_HINTS`).

    Raises:
        KeyError: not an optional dependency of the project (lists the known ones).
    """
    if module not in INSTALL_HINTS:
        raise KeyError(f"{module!r} is not an optional dependency; known: {sorted(INSTALL_HINTS)}")
    return INSTALL_HINTS[module]


def is_available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    return importlib.util.find_spec(module.split(".")[0]) is not None


def require(module: str, purpose: str) -> ModuleType:
    """Import the optional dependency ``module`` for ``purpose``.

    Raises:
        ImportError: ``"<purpose> needs <module>, which is not importable: <install hint> (import error: ...)"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{purpose} needs {module}, which is not importable: {install_hint(module)}\n"
                          f"(import error: {exc})") from exc


__all__ = ["INSTALL_HINTS", "install_hint", "is_available", "require"]
