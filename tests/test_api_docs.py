"""The API reference is generated from the docstrings by pdoc (`make api-docs`): it builds, page for page,
without a warning (a broken cross-reference or a module that fails to import would warn or raise)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest


@pytest.mark.slow
def test_api_reference_builds_without_warnings(tmp_path: Path) -> None:
    pdoc = pytest.importorskip("pdoc")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc("distilvpr_lib", "!distilvpr_lib.commands", output_directory=tmp_path)
    pages = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.html")}
    for module in ("distilvpr_lib/config.html", "distilvpr_lib/engine/runs/student_run.html",
                   "distilvpr_lib/analysis/benchmark_stats.html", "distilvpr_lib/losses/distiller.html"):
        assert module in pages, module
    assert not caught, [str(w.message) for w in caught]
