"""Validate a benchmark folder (either layout) and summarise it; used by ``distilvpr check-data``.

Checks: the pickles load safely and are well formed (:meth:`Benchmark.load`); every cloud file
(scanned from the run folders and referenced by the pickles) is readable and of the right size;
Oxford location CSVs are readable and every row has its cloud; every referenced sub-map has its
image when the benchmark has images, and every image's header reads (``deep``: every image decodes);
the query pickles' true-neighbour lists agree with a
recomputation from the stored positions (25 m, the PointNetVLAD rule).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import AUTO_LAYOUT, TRUE_NEIGHBOUR_RADIUS_M, Layout
from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.data.clouds import read_cloud_file, timestamp_from_path
from distilvpr_lib.data.files import PathLike, safe_resolve, symlink_problem
from distilvpr_lib.data.images import check_image_file, image_size_problems
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.splits import (
    BOREAS_CLOUD_FOLDER,
    EVALUATION_CLOUD_FOLDER,
    EVALUATION_LOCATIONS_CSV,
    OXFORD_RUNS_FOLDER,
    TRAINING_CLOUD_FOLDER,
    TRAINING_LOCATIONS_CSV,
)
from distilvpr_lib.errors import DataFormatError

#: (cloud folder, its locations CSV) of an Oxford run.
OXFORD_KINDS: tuple[tuple[str, str], ...] = (
    (EVALUATION_CLOUD_FOLDER, EVALUATION_LOCATIONS_CSV),
    (TRAINING_CLOUD_FOLDER, TRAINING_LOCATIONS_CSV),
)
#: Stop listing problems after this many (the count is still reported).
MAX_LISTED_PROBLEMS = 50


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found: summary lines, problems (each naming a file), statistics."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add_problem(self, message: str) -> None:
        self.problems.append(message)


def true_neighbour_counts(database: list[dict], query: list[dict]) -> dict[str, Any]:
    """True-neighbour statistics of evaluation sets.

    Returns:
        dict with ``per_query_run`` (list: queries of run j with a neighbour in any other run),
        ``per_pair`` ({(db i, query j): queries of j with a neighbour in i}) and
        ``neighbour_pairs`` ({(i, j): number of (query, database) pairs within the radius}).
    """
    per_query_run = []
    per_pair: dict[tuple[int, int], int] = {}
    neighbour_pairs: dict[tuple[int, int], int] = {}
    for j, run_set in enumerate(query):
        any_count = 0
        for entry in run_set.values():
            if any(entry[i] for i in range(len(database)) if i != j):
                any_count += 1
        per_query_run.append(any_count)
        for i in range(len(database)):
            if i == j:
                continue
            per_pair[(i, j)] = sum(1 for entry in run_set.values() if entry[i])
            neighbour_pairs[(i, j)] = sum(len(entry[i]) for entry in run_set.values())
    return {"per_query_run": per_query_run, "per_pair": per_pair, "neighbour_pairs": neighbour_pairs}


def recompute_true_neighbours(database: list[dict], query: list[dict], radius: float = TRUE_NEIGHBOUR_RADIUS_M
                              ) -> list[dict[int, dict[int, list[int]]]]:
    """Brute-force recomputation: for query run j, entry q, other run i, the database-i indices
    whose (northing, easting) lie within ``radius`` (``<=``) of the query's."""
    db_positions = [np.array([[e["northing"], e["easting"]] for _, e in sorted(s.items())]).reshape(-1, 2)
                    for s in database]
    out: list[dict[int, dict[int, list[int]]]] = []
    for j, run_set in enumerate(query):
        run_out: dict[int, dict[int, list[int]]] = {}
        for key, entry in run_set.items():
            here = np.array([entry["northing"], entry["easting"]])
            run_out[key] = {}
            for i, positions in enumerate(db_positions):
                if i == j:
                    continue
                distances = np.sqrt(((positions - here) ** 2).sum(axis=1)) if len(positions) else np.zeros(0)
                run_out[key][i] = np.flatnonzero(distances <= radius).tolist()
        out.append(run_out)
    return out


def _scan_cloud_files(benchmark: Benchmark, report: DatasetReport) -> dict[str, list[Path]]:
    """Cloud files per kind found in the run folders (Oxford: per cloud folder; Boreas: lidar folder)."""
    root = benchmark.dataset_dir
    kinds: dict[str, list[Path]] = {}
    if benchmark.layout == Layout.OXFORD:
        runs_dir = root / OXFORD_RUNS_FOLDER
        if not runs_dir.is_dir():
            return kinds
        for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
            for folder, csv_name in OXFORD_KINDS:
                cloud_dir, csv_path = run_dir / folder, run_dir / csv_name
                files = sorted(cloud_dir.glob("*.bin")) if cloud_dir.is_dir() else []
                kinds.setdefault(folder, []).extend(files)
                if not csv_path.is_file():
                    if files:
                        report.add_problem(f"{csv_path}: location CSV missing for the {len(files)} clouds in {cloud_dir}")
                    continue
                try:
                    frame = read_locations_csv(csv_path)
                except DataFormatError as exc:
                    report.add_problem(str(exc))
                    continue
                listed = set(frame["timestamp"].tolist())
                present = set()
                for f in files:
                    try:
                        present.add(timestamp_from_path(f))
                    except DataFormatError as exc:
                        report.add_problem(str(exc))
                for ts in sorted(listed - present):
                    report.add_problem(f"{cloud_dir / f'{ts}.bin'}: cloud listed in {csv_path} not found")
                extra = present - listed
                if extra:
                    report.warnings.append(f"{cloud_dir}: {len(extra)} cloud(s) not listed in {csv_path.name}")
    else:
        for cloud_dir in sorted([*root.glob(f"*/{BOREAS_CLOUD_FOLDER}"), *root.glob(f"*/*/{BOREAS_CLOUD_FOLDER}")]):
            kinds.setdefault(BOREAS_CLOUD_FOLDER, []).extend(sorted(cloud_dir.glob("*.npy")))
    return kinds


def check_images(benchmark: Benchmark, rel_paths: list[str], report: DatasetReport,
                 decode: bool = False) -> tuple[int, int]:
    """Check every image of the sub-maps ``rel_paths``: listed in the index, present, header readable
    (``decode``: every pixel decodes), and all of one size (the most common one: a batch stacks them).
    Adds one problem per bad image.

    Returns:
        ``(good, total)``: readable images and images looked at.
    """
    good = total = 0
    sizes: dict[Path, tuple[int, int]] = {}
    for rel in rel_paths:
        try:
            count = benchmark.image_count(rel)
        except DataFormatError as exc:
            report.add_problem(str(exc))
            total += 1
            continue
        for k in range(max(count, 1)):
            total += 1
            try:
                path = benchmark.image_path(rel, k)
                sizes[path] = check_image_file(path, decode=decode)
                good += 1
            except (DataFormatError, IndexError) as exc:
                report.add_problem(str(exc))
    odd = image_size_problems(sizes)
    for problem in odd:
        report.add_problem(str(problem))
    if sizes:
        report.stats["image_size"] = Counter(sizes.values()).most_common(1)[0][0]
    return good - len(odd), total


def check_dataset(dataset_dir: PathLike, image_dir: PathLike | None = None, layout: str = AUTO_LAYOUT,
                  deep: bool = False) -> DatasetReport:
    """Validate a dataset folder and build its summary (never raises on data problems).

    Args:
        deep: decode every image completely (``check-data --deep``); by default only each image's
            header is read (format and size), which catches empty, garbage and non-image files.

    Returns:
        :class:`DatasetReport`; ``report.ok`` is False when any problem was found, each problem
        message naming the offending file.
    """
    report = DatasetReport()
    dataset_dir = Path(dataset_dir)
    try:
        benchmark = Benchmark.load(dataset_dir, image_dir=image_dir, layout=layout)
    except (DataFormatError, KeyError) as exc:
        report.add_problem(str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc))
        return report
    lines = report.lines
    lines.append(f"dataset: {dataset_dir} (layout: {benchmark.layout})")
    lines.append(f"runs: {len(benchmark.run_names)} ({', '.join(benchmark.run_names)})")

    # Clouds: scanned files and every referenced one.
    kinds = _scan_cloud_files(benchmark, report)
    referenced = benchmark.all_rel_paths()
    to_read: dict[Path, None] = {}
    looping: set[Path] = set()
    for files in kinds.values():
        for f in files:
            try:
                to_read.setdefault(safe_resolve(f), None)
            except DataFormatError as exc:
                report.add_problem(str(exc))
                looping.add(f)
    for rel in referenced:
        path = benchmark.cloud_path(rel)
        if path in looping:
            continue
        if path.is_symlink() and not path.exists():
            report.add_problem(str(DataFormatError(symlink_problem(path), path=path, hint="remove or fix the link")))
        elif not path.is_file():
            report.add_problem(f"{path}: cloud referenced by the benchmark pickles not found")
        else:
            to_read.setdefault(path.resolve(), None)
    for path in to_read:
        try:
            read_cloud_file(path)
        except DataFormatError as exc:
            report.add_problem(str(exc))
    total_scanned = sum(len(v) for v in kinds.values())
    per_kind = ", ".join(f"{k}: {len(v)}" for k, v in kinds.items() if v) or "none found in run folders"
    lines.append(f"submaps: {total_scanned} ({per_kind})")
    lines.append(f"clouds read: {len(to_read)} (referenced by pickles: {len(referenced)})")
    report.stats.update(runs=len(benchmark.run_names), submaps=total_scanned,
                        submaps_per_kind={k: len(v) for k, v in kinds.items()}, clouds_read=len(to_read))

    # Images.
    if benchmark.has_images:
        found, total = check_images(benchmark, referenced, report, decode=deep)
        how = "decoded completely" if deep else "header read; --deep decodes every pixel"
        lines.append(f"images: {found} of {total} readable, of {len(referenced)} referenced submaps ({how}; "
                     f"index {benchmark.lidar2image_path}, {len(benchmark.lidar2image or {})} LiDAR timestamps)")
        report.stats["images"] = found
    else:
        lines.append("images: none (no image index found)")
        report.stats["images"] = 0

    # Training tuples.
    tuples = benchmark.training_tuples
    if tuples:
        n_pos = np.array([len(t.positives) for t in tuples.values()])
        n_nonneg = np.array([len(t.non_negatives) for t in tuples.values()])
        lines.append(f"training tuples: {len(tuples)} (mean positives {n_pos.mean():.1f}, "
                     f"without positives {int((n_pos == 0).sum())}, mean non-negatives {n_nonneg.mean():.1f})")
    else:
        lines.append("training tuples: 0 (evaluation-only folder)")
    report.stats["training_tuples"] = len(tuples)

    # Evaluation splits.
    for split in ("test", "validation"):
        if not benchmark.has_split(split):
            lines.append(f"{split} split: absent")
            continue
        database, query = benchmark.database_sets(split), benchmark.query_sets(split)
        names = benchmark.set_run_names(split)
        counts = true_neighbour_counts(database, query)
        lines.append(f"{split} split: {len(database)} runs, database {sum(map(len, database))} submaps, "
                     f"query {sum(map(len, query))} submaps")
        for r, name in enumerate(names):
            lines.append(f"  run {r} {name or '(empty)'}: database {len(database[r])}, query {len(query[r])}, "
                         f"queries with a true neighbour ({TRUE_NEIGHBOUR_RADIUS_M:g} m) in another run: "
                         f"{counts['per_query_run'][r]}")
        pairs = counts["per_pair"]
        if pairs:
            shown = ", ".join(f"db {i}/query {j}: {pairs[(i, j)]} queries, {counts['neighbour_pairs'][(i, j)]} pairs"
                              for (i, j) in sorted(pairs)[:12])
            more = f" (+{len(pairs) - 12} more)" if len(pairs) > 12 else ""
            lines.append(f"  true-neighbour pairs at {TRUE_NEIGHBOUR_RADIUS_M:g} m: {shown}{more}")
        report.stats[split] = {"database": [len(s) for s in database], "query": [len(s) for s in query], **counts}
        # Verify the stored neighbour lists against the stored positions.
        recomputed = recompute_true_neighbours(database, query)
        query_path = benchmark.split_files(split)[1]
        mismatches = [(j, key, i) for j, run_set in enumerate(query) for key, entry in run_set.items()
                      for i in recomputed[j][key] if sorted(entry[i]) != recomputed[j][key][i]]
        if mismatches:
            j, key, i = mismatches[0]
            message = (f"{query_path}: {len(mismatches)} true-neighbour list(s) disagree with the positions at "
                       f"{TRUE_NEIGHBOUR_RADIUS_M:g} m (first: query run {j} entry {key} vs database run {i})")
            if benchmark.layout == Layout.OXFORD:
                report.add_problem(message)
            else:  # the Boreas radius is not known for sure (docs/METHOD.md §2.2)
                report.warnings.append(message)
    if benchmark.validation_squares:
        squares = "; ".join(f"N {n:.1f} E {e:.1f} ±{h:.1f} m" for n, e, h in benchmark.validation_squares)
        lines.append(f"validation squares: {squares}")
    return report


def format_report(report: DatasetReport) -> str:
    """The report as printable text (summary, warnings, then problems)."""
    out = list(report.lines)
    for w in report.warnings:
        out.append(f"warning: {w}")
    if report.problems:
        out.append(f"PROBLEMS ({len(report.problems)}):")
        out.extend(f"  {p}" for p in report.problems[:MAX_LISTED_PROBLEMS])
        if len(report.problems) > MAX_LISTED_PROBLEMS:
            out.append(f"  ... and {len(report.problems) - MAX_LISTED_PROBLEMS} more")
    else:
        out.append("OK: no problems found")
    return "\n".join(out)
