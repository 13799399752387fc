"""Tables the data-exploration figures and notebook 01 read from a benchmark: places, split sizes, region
squares, nearest sub-maps, run conditions, a default place (plain data, no drawing)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Run-condition files looked up by :func:`load_run_conditions`, in order (dataset folder first).
CONDITION_FILES: tuple[str, ...] = ("run_conditions.json", "conditions.json", "synth_manifest.json", "manifest.json")


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def benchmark_places(benchmark: Any) -> pd.DataFrame:
    """Every sub-map of a benchmark with its run, position and role.

    Returns:
        DataFrame with one row per (sub-map, role), columns ``run, rel_path, northing, easting,
        role`` where ``role`` is ``"training"`` (a training tuple), ``"validation query"``,
        ``"validation database"``, ``"test query"`` or ``"test database"``. A sub-map appears once
        per role it plays (a test query is also in the test database).
    """
    from distilvpr_lib.data.clouds import run_from_path

    rows: list[tuple[str, str, float, float, str]] = []
    for t in benchmark.training_tuples.values():
        pos = np.asarray(t.position, dtype=np.float64).reshape(-1)
        rows.append((run_from_path(t.rel_scan_filepath), t.rel_scan_filepath, float(pos[0]), float(pos[1]), "training"))
    for split in ("validation", "test"):
        if not benchmark.has_split(split):
            continue
        for kind, sets in (("database", benchmark.database_sets(split)), ("query", benchmark.query_sets(split))):
            for run_set in sets:
                for entry in run_set.values():
                    rel = entry["query"]
                    rows.append((run_from_path(rel), rel, float(entry["northing"]), float(entry["easting"]),
                                 f"{split} {kind}"))
    return pd.DataFrame(rows, columns=["run", "rel_path", "northing", "easting", "role"])


def split_size_table(benchmark: Any) -> pd.DataFrame:
    """Sizes of every split per run.

    Returns:
        DataFrame indexed by run name with columns ``training, validation database, validation
        query, test database, test query`` (counts of sub-maps; 0 where a run plays no part), plus a
        ``total`` row.
    """
    places = benchmark_places(benchmark)
    columns = ["training", "validation database", "validation query", "test database", "test query"]
    table = places.pivot_table(index="run", columns="role", values="rel_path", aggfunc="count", fill_value=0)
    table = table.reindex(columns=columns, fill_value=0).astype(int)
    table.columns.name = None
    table.loc["total"] = table.sum(axis=0)
    return table


def region_squares(benchmark: Any) -> dict[str, list[tuple[float, float, float]]]:
    """The test and validation squares ``(northing, easting, half_width)`` of a benchmark.

    Test squares come from ``validation_squares.json`` (written by ``data.splits``) when present,
    else the four PointNetVLAD squares P1..P4; validation squares from the benchmark.
    """
    from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, OXFORD_TEST_SQUARE_HALF_WIDTH_M
    from distilvpr_lib.data.splits import VALIDATION_SQUARES_JSON

    tests: list[tuple[float, float, float]] = [(float(n), float(e), float(OXFORD_TEST_SQUARE_HALF_WIDTH_M))
                                               for n, e in OXFORD_TEST_SQUARE_CENTRES]
    path = Path(benchmark.dataset_dir) / VALIDATION_SQUARES_JSON
    if path.is_file():
        try:
            info = json.loads(path.read_text())
            if info.get("test_squares"):
                tests = [tuple(float(v) for v in s) for s in info["test_squares"]]  # type: ignore[misc]
        except (ValueError, TypeError):
            pass  # Benchmark.load already validated the file's validation squares; keep the defaults
    return {"test": tests, "validation": [tuple(map(float, s)) for s in benchmark.validation_squares]}  # type: ignore[misc]


def nearest_submaps(benchmark: Any, northing: float, easting: float, split: str = "test",
                    runs: Sequence[str] | None = None) -> pd.DataFrame:
    """For each run of a split's database sets, the sub-map nearest to a position.

    Args:
        northing, easting: the place (UTM metres).
        split: ``"test"`` or ``"validation"``.
        runs: keep only these run names (default all, in database-set order).

    Returns:
        DataFrame with columns ``run, set_index, index, rel_path, northing, easting, distance_m``
        (one row per run; ``set_index`` = database set index, ``index`` = row in that set).
    """
    rows = []
    names = benchmark.set_run_names(split)
    for set_index, run_set in enumerate(benchmark.database_sets(split)):
        if not run_set or (runs is not None and names[set_index] not in runs):
            continue
        keys = list(run_set.keys())
        pos = np.array([[run_set[k]["northing"], run_set[k]["easting"]] for k in keys], dtype=np.float64)
        dist = np.hypot(pos[:, 0] - northing, pos[:, 1] - easting)
        best = int(np.argmin(dist))
        entry = run_set[keys[best]]
        rows.append((names[set_index], set_index, int(keys[best]), entry["query"], float(entry["northing"]),
                     float(entry["easting"]), float(dist[best])))
    return pd.DataFrame(rows, columns=["run", "set_index", "index", "rel_path", "northing", "easting", "distance_m"])


def load_run_conditions(dataset_dir: str | Path) -> dict[str, str]:
    """Per-run condition names (``{"2014-05-19-13-20-57": "overcast", ...}``) if the dataset has them.

    Looks for ``run_conditions.json`` / ``conditions.json`` / ``synth_manifest.json`` /
    ``manifest.json`` in ``dataset_dir`` and accepts either ``{run: name}``, ``{run: {"name"|
    "condition"|"label": ...}}`` or a dict with a ``"runs"`` or ``"conditions"`` entry of either
    shape (or a list of records with ``run``/``name`` keys). Real benchmarks have none: ``{}``.
    """
    folder = Path(dataset_dir)
    for name in CONDITION_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except ValueError:
            continue
        conditions = _parse_conditions(info)
        if conditions:
            return conditions
    return {}


def _condition_label(value: Any) -> str | None:
    """A short condition name from a string or a record (``condition``/``label``, else
    ``archetype`` [+ ``season``], else ``preset``/``kind``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("condition", "label"):
            if isinstance(value.get(key), str):
                return value[key]
        if isinstance(value.get("archetype"), str):
            season = value.get("season")
            return value["archetype"] + (f", {season}" if isinstance(season, str) else "")
        for key in ("preset", "kind"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def _parse_conditions(info: Any) -> dict[str, str]:
    if isinstance(info, Mapping):
        for key in ("runs", "conditions", "run_conditions"):
            if key in info:
                parsed = _parse_conditions(info[key])
                if parsed:
                    return parsed
        out = {str(k): lab for k, v in info.items() if (lab := _condition_label(v)) is not None}
        return out if out and all(_looks_like_run(k) for k in out) else {}
    if isinstance(info, list):
        out = {}
        for record in info:
            if not isinstance(record, Mapping):
                continue
            run = record.get("run", record.get("run_name", record.get("name")))
            label = _condition_label({k: v for k, v in record.items() if k not in ("run", "run_name", "name")})
            if isinstance(run, str) and label is not None:
                out[run] = label
        return out
    return {}


def _looks_like_run(name: str) -> bool:
    return any(ch.isdigit() for ch in name)


def default_place(benchmark: Any, split: str = "test") -> tuple[float, float]:
    """A place to show across runs: the middle query of the first non-empty query set of ``split``
    (falling back to the middle training sub-map). Returns ``(northing, easting)``."""
    if benchmark.has_split(split):
        for run_set in benchmark.query_sets(split):
            if run_set:
                entry = run_set[sorted(run_set)[len(run_set) // 2]]
                return float(entry["northing"]), float(entry["easting"])
    tuples = list(benchmark.training_tuples.values())
    if not tuples:
        raise ValueError(f"{benchmark.dataset_dir}: no query and no training sub-map to pick a place from")
    pos = np.asarray(tuples[len(tuples) // 2].position, dtype=np.float64).reshape(-1)
    return float(pos[0]), float(pos[1])


__all__ = ["CONDITION_FILES", "benchmark_places", "default_place", "load_run_conditions", "nearest_submaps",
           "region_squares", "split_size_table"]
