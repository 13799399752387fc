"""Prepare a benchmark folder holding real data: the pickles by the PointNetVLAD rules plus the validation split.

``distilvpr prepare-data DIR`` calls :func:`prepare_benchmark`. It builds, from the per-run location CSVs,
the training tuples, the test database / query sets and the validation split exactly as
:func:`distilvpr_lib.data.splits.build_oxford_benchmark` does (test squares P1-P4, radii 10 / 50 / 25 m,
one validation square held out of the training region with a 50 m guard band). What it writes:

* files that are missing: written;
* the validation split (``validation_evaluation_{database,query}.pickle``, ``validation_squares.json``):
  always (re)written — no published benchmark has one, so these files are always the workbench's own;
* benchmark files that already exist (the authors' ``training_queries_baseline.pickle``,
  ``oxford_evaluation_{database,query}.pickle``): left byte for byte untouched when their content equals
  what the rules give; when it differs they are still kept, and the rebuilt set is written beside them as
  ``<name>.rebuilt.pickle`` (the loader never reads it) — unless ``force``, which replaces them.

When a kept training pickle differs from the rebuilt one, its tuples may lie inside the validation squares
or their guard band; the report says how many, since validation recalls are then optimistic.

Only the Oxford layout has per-run CSVs to build from (``oxford/<run>/pointcloud_locations_20m[_10overlap].csv``);
a Boreas folder is refused with the reason (its benchmark split is not published, docs/METHOD.md §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import LAYOUTS, NON_NEGATIVE_RADIUS_M, DataConfig, Layout
from distilvpr_lib.data.files import PathLike
from distilvpr_lib.data.pickles import load_evaluation_sets, load_training_tuples, save_pickle
from distilvpr_lib.data.splits import (
    EVALUATION_LOCATIONS_CSV,
    OXFORD_RUNS_FOLDER,
    TEST_DATABASE_PICKLE,
    TEST_QUERY_PICKLE,
    TRAINING_LOCATIONS_CSV,
    TRAINING_PICKLE,
    VALIDATION_DATABASE_PICKLE,
    VALIDATION_QUERY_PICKLE,
    VALIDATION_SQUARES_JSON,
    BenchmarkSplits,
    build_oxford_benchmark,
    distance_to_squares,
    in_squares,
    list_oxford_runs,
    write_validation_squares,
)
from distilvpr_lib.errors import DataFormatError, MissingDataError

#: Suffix of a rebuilt benchmark file written beside an existing one that differs from it.
REBUILT_SUFFIX = ".rebuilt.pickle"


@dataclass
class FileAction:
    """What happened to one benchmark file."""

    name: str
    #: "written" (was missing) | "replaced" (force) | "kept" (same content) | "kept, rebuilt beside" | "rewritten"
    action: str
    detail: str = ""


@dataclass
class PreparationReport:
    """What :func:`prepare_benchmark` built and wrote."""

    dataset_dir: Path
    splits: BenchmarkSplits
    files: list[FileAction] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable lines: the runs and sets built, then one line per file, then warnings."""
        s = self.splits
        out = [f"{self.dataset_dir}: oxford layout",
               f"  training runs: {len(s.train_runs)} -> {len(s.training_tuples)} training tuples"
               f" ({s.removed_for_validation} held out for validation, {s.removed_for_guard} in the guard band)",
               f"  test runs: {len(s.eval_runs)}; queries per run {[len(q) for q in s.test_query]}",
               f"  validation squares: {[tuple(round(v, 1) for v in sq) for sq in s.validation_squares] or 'none'};"
               f" queries per run {[len(q) for q in s.validation_query] or 'none'}"]
        out += [f"  {f.name}: {f.action}" + (f" ({f.detail})" if f.detail else "") for f in self.files]
        out += [f"warning: {w}" for w in self.warnings]
        return out


def comparable_content(obj: Any) -> Any:
    """A plain-Python form of a benchmark pickle's content (training tuples, evaluation sets) that compares
    with ``==`` across numpy scalar types, arrays and ``TrainingTuple`` objects."""
    if isinstance(obj, dict):
        return {(int(k) if isinstance(k, (int, np.integer)) else k): comparable_content(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [comparable_content(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return comparable_content(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "rel_scan_filepath"):  # a TrainingTuple
        return {"id": int(obj.id), "timestamp": int(obj.timestamp), "rel": obj.rel_scan_filepath,
                "positives": comparable_content(obj.positives), "non_negatives": comparable_content(obj.non_negatives),
                "position": comparable_content(obj.position)}
    return obj


def _load(path: Path, name: str) -> Any:
    if name == TRAINING_PICKLE:
        return load_training_tuples(path)
    return load_evaluation_sets(path, "query" if name == TEST_QUERY_PICKLE else "database")


def _describe(name: str, obj: Any) -> str:
    if name == TRAINING_PICKLE:
        return f"{len(obj)} tuples"
    return f"{[len(s) for s in obj]} entries per run"


def _leaks(training: dict[int, Any], splits: BenchmarkSplits) -> int:
    """Training tuples inside a validation square or within the guard band of one."""
    if not training or not splits.validation_squares:
        return 0
    positions = np.array([np.asarray(t.position, dtype=np.float64) for t in training.values()]).reshape(-1, 2)
    near = in_squares(positions, splits.validation_squares) | (
        distance_to_squares(positions, splits.validation_squares) < NON_NEGATIVE_RADIUS_M)
    return int(near.sum())


def prepare_benchmark(dataset_dir: PathLike, layout: str = "oxford", force: bool = False,
                      validation_fraction: float | None = None) -> PreparationReport:
    """Build the benchmark pickles and the validation split of a real dataset folder (see the module docstring).

    Args:
        dataset_dir: the folder holding ``oxford/<run>/...`` (Oxford layout).
        layout: ``"oxford"``; ``"boreas"`` is refused (no published split to rebuild from CSVs).
        force: replace existing benchmark files that differ from the rebuilt ones (default: keep them and
            write the rebuilt sets beside them).
        validation_fraction: share of the training region held out for validation (default
            ``DataConfig.validation_fraction``; 0 = none).

    Returns:
        :class:`PreparationReport` (print :meth:`PreparationReport.lines`).

    Raises:
        MissingDataError: no folder, no ``oxford/`` runs with location CSVs, a listed cloud missing.
        DataFormatError: a Boreas folder, an unreadable existing pickle.
    """
    dataset_dir = Path(dataset_dir)
    if layout not in LAYOUTS:
        raise KeyError(f"unknown layout {layout!r}; known layouts: {list(LAYOUTS)}")
    if layout == Layout.BOREAS:
        raise DataFormatError(
            f"{dataset_dir}: prepare-data builds Oxford-layout folders only; the Boreas benchmark's split is not "
            "published (docs/METHOD.md §2.2), so use the authors' boreas_*.pickle files as they are "
            "(distilvpr check-data validates them)")
    if not dataset_dir.is_dir():
        raise MissingDataError(f"{dataset_dir}: dataset folder not found")
    if not (list_oxford_runs(dataset_dir, EVALUATION_LOCATIONS_CSV) or list_oxford_runs(dataset_dir, TRAINING_LOCATIONS_CSV)):
        raise MissingDataError(f"{dataset_dir / OXFORD_RUNS_FOLDER}: no run folders with {EVALUATION_LOCATIONS_CSV} "
                               f"or {TRAINING_LOCATIONS_CSV} (the PointNetVLAD layout, see data/README.md)")
    splits = build_oxford_benchmark(dataset_dir, validation_fraction=validation_fraction, write=False)
    report = PreparationReport(dataset_dir, splits)

    built = {TRAINING_PICKLE: splits.training_tuples, TEST_DATABASE_PICKLE: splits.test_database,
             TEST_QUERY_PICKLE: splits.test_query}
    kept_training: dict[int, Any] | None = None
    for name, obj in built.items():
        path = dataset_dir / name
        if name == TRAINING_PICKLE and not splits.train_runs:
            if path.is_file():
                report.files.append(FileAction(name, "kept", f"no {TRAINING_LOCATIONS_CSV} to rebuild it from"))
            else:
                report.files.append(FileAction(name, "not written", f"no run has a {TRAINING_LOCATIONS_CSV}"))
            continue
        if not path.is_file():
            save_pickle(path, obj)
            report.files.append(FileAction(name, "written", _describe(name, obj)))
            continue
        existing = _load(path, name)
        if comparable_content(existing) == comparable_content(obj):
            report.files.append(FileAction(name, "kept", f"same content as the rules give: {_describe(name, obj)}"))
        elif force:
            save_pickle(path, obj)
            report.files.append(FileAction(name, "replaced", f"was {_describe(name, existing)}, "
                                                             f"now {_describe(name, obj)}"))
        else:
            beside = dataset_dir / (Path(name).stem + REBUILT_SUFFIX)
            save_pickle(beside, obj)
            report.files.append(FileAction(name, "kept, rebuilt beside", f"{_describe(name, existing)}; the rules "
                                           f"give {_describe(name, obj)} -> {beside.name} (--force replaces)"))
            if name == TRAINING_PICKLE:
                kept_training = existing

    if splits.validation_squares:
        for name, obj in ((VALIDATION_DATABASE_PICKLE, splits.validation_database),
                          (VALIDATION_QUERY_PICKLE, splits.validation_query)):
            save_pickle(dataset_dir / name, obj)
            report.files.append(FileAction(name, "written", _describe(name, obj)))
        fraction = DataConfig().validation_fraction if validation_fraction is None else validation_fraction
        write_validation_squares(dataset_dir, splits, fraction)
        report.files.append(FileAction(VALIDATION_SQUARES_JSON, "written", f"{len(splits.validation_squares)} square(s)"))
    else:
        report.warnings.append("no validation split: the training region is empty (every sub-map lies in a test "
                               "square or no run has training sub-maps); model selection needs one")
    leaks = _leaks(kept_training or {}, splits)
    if leaks:
        report.warnings.append(f"the kept {TRAINING_PICKLE} holds {leaks} tuple(s) inside a validation square or "
                               f"within {NON_NEGATIVE_RADIUS_M:g} m of one: validation recalls are optimistic "
                               "(--force replaces it by the rebuilt set, which leaves them out)")
    return report

