"""Build the benchmark sets from per-run CSVs by the PointNetVLAD rules, plus a validation split.

Test split (docs/METHOD.md §2.3, faithful to PointNetVLAD / MinkLoc):

* A sub-map is in the *test region* when it lies strictly inside one of the four axis-aligned
  squares of half-width 150 m centred at P1..P4 (``config.OXFORD_TEST_SQUARE_CENTRES``).
* Training tuples: every training run's ``pointcloud_locations_20m_10overlap.csv`` sub-maps outside
  the test region (and, here, outside the validation region and its guard band). One KD-tree over
  all of them gives ``positives`` (within 10 m, self excluded) and ``non_negatives`` (within 50 m,
  self included) as sorted int64 arrays. "Within r" is ``distance <= r`` (sklearn's ``query_radius``).
* Evaluation database: for every evaluation run, all sub-maps of ``pointcloud_locations_20m.csv``.
* Evaluation query: the sub-maps of the same runs inside the test region, each with, for every
  other run ``i``, the list of database-``i`` indices within 25 m.

Validation split (not in the reference, which selects epochs on the test set; DESIGN.md:
"selection on validation, report on test"):

* One or more axis-aligned *validation squares* ``(northing, easting, half_width)`` inside the
  training region. By default one square is chosen automatically and deterministically by
  :func:`choose_validation_squares`: it is centred on the training-region sub-map farthest from
  every test-square centre (the far end of the training route, ties broken by position), and its
  half-width is the smallest one that holds ``validation_fraction`` of all training-region
  sub-maps (Chebyshev distance). Pass ``validation_squares`` to fix them by hand.
* Training sub-maps inside a validation square, or within ``validation_guard_m`` (default the 50 m
  non-negative radius) of one, are removed from the training tuples, so no training sub-map (nor
  any of its positives / non-negatives) lies within 50 m of a validation query.
* Validation database: for every validation run, its ``pointcloud_20m`` sub-maps outside the test
  region (the test region is never touched by model selection). Validation query: those inside a
  validation square, with per-other-run lists of database indices within 25 m (as for the test).
* The chosen squares are written to ``validation_squares.json``.

Everything is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import (
    NON_NEGATIVE_RADIUS_M,
    OXFORD_TEST_SQUARE_CENTRES,
    OXFORD_TEST_SQUARE_HALF_WIDTH_M,
    POSITIVE_RADIUS_M,
    TRUE_NEIGHBOUR_RADIUS_M,
    DataConfig,
)
from distilvpr_lib.data.files import PathLike, atomic_write
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.pickles import TrainingTuple, load_lidar2image_ndx, save_pickle
from distilvpr_lib.errors import DataFormatError, MissingDataError

#: Sub-folder of a dataset holding the Oxford runs.
OXFORD_RUNS_FOLDER = "oxford"
TRAINING_CLOUD_FOLDER = "pointcloud_20m_10overlap"
TRAINING_LOCATIONS_CSV = "pointcloud_locations_20m_10overlap.csv"
EVALUATION_CLOUD_FOLDER = "pointcloud_20m"
EVALUATION_LOCATIONS_CSV = "pointcloud_locations_20m.csv"

TRAINING_PICKLE = "training_queries_baseline.pickle"
TEST_DATABASE_PICKLE = "oxford_evaluation_database.pickle"
TEST_QUERY_PICKLE = "oxford_evaluation_query.pickle"
VALIDATION_DATABASE_PICKLE = "validation_evaluation_database.pickle"
VALIDATION_QUERY_PICKLE = "validation_evaluation_query.pickle"
VALIDATION_SQUARES_JSON = "validation_squares.json"
LIDAR2IMAGE_PICKLE = "lidar2image_ndx.pickle"

#: Boreas layout (docs/METHOD.md §2.2): per-run folders and files, and the benchmark files at the dataset root.
BOREAS_CLOUD_FOLDER = "lidar_1_4096_interval10"
BOREAS_IMAGE_FOLDER = "camera_lidar_interval10"
BOREAS_P0_FOLDER = "P0_camera_interval10"
BOREAS_T_CAMERA_LIDAR_FOLDER = "T_camera_lidar_basedon_pose_interval10"
BOREAS_LOCATIONS_CSV = "lidar_locations_interval10.csv"
BOREAS_TRAINING_PICKLE = "boreas_training_queries_baseline.pickle"
BOREAS_TEST_DATABASE_PICKLE = "boreas_evaluation_database.pickle"
BOREAS_TEST_QUERY_PICKLE = "boreas_evaluation_query.pickle"
BOREAS_VALIDATION_DATABASE_PICKLE = "boreas_validation_evaluation_database.pickle"
BOREAS_VALIDATION_QUERY_PICKLE = "boreas_validation_evaluation_query.pickle"
BOREAS_LIDAR2IMAGE_PICKLE = "boreas_lidar2image_ndx.pickle"
BOREAS_SQUARES_JSON = "boreas_squares.json"

#: A square region: (northing centre, easting centre, half-width in metres).
Square = tuple[float, float, float]


# ---------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------
def oxford_test_squares(
    centres: Sequence[tuple[float, float]] = OXFORD_TEST_SQUARE_CENTRES,
    half_width: float = OXFORD_TEST_SQUARE_HALF_WIDTH_M,
) -> list[Square]:
    """The PointNetVLAD test squares as ``(northing, easting, half_width)`` triples."""
    return [(float(n), float(e), float(half_width)) for n, e in centres]


def in_squares(positions: np.ndarray, squares: Sequence[Square]) -> np.ndarray:
    """Which positions lie strictly inside any square.

    Args:
        positions: ``(N, 2)`` array of ``[northing, easting]``.
        squares: ``(northing, easting, half_width)`` triples.

    Returns:
        ``(N,)`` bool array.
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    inside = np.zeros(len(positions), dtype=bool)
    for north, east, half in squares:
        inside |= (np.abs(positions[:, 0] - north) < half) & (np.abs(positions[:, 1] - east) < half)
    return inside


def distance_to_squares(positions: np.ndarray, squares: Sequence[Square]) -> np.ndarray:
    """Euclidean distance from each position to the nearest square (0 inside).

    Args:
        positions: ``(N, 2)`` ``[northing, easting]``.

    Returns:
        ``(N,)`` float64 distances (``inf`` when there is no square).
    """
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    best = np.full(len(positions), np.inf)
    for north, east, half in squares:
        dn = np.maximum(np.abs(positions[:, 0] - north) - half, 0.0)
        de = np.maximum(np.abs(positions[:, 1] - east) - half, 0.0)
        best = np.minimum(best, np.hypot(dn, de))
    return best


def choose_validation_squares(
    positions: np.ndarray,
    fraction: float,
    avoid_centres: Sequence[tuple[float, float]] = OXFORD_TEST_SQUARE_CENTRES,
) -> list[Square]:
    """Choose one validation square holding ``fraction`` of the training-region positions.

    Deterministic: the centre is the position farthest (Euclidean) from every point of
    ``avoid_centres`` (ties: smallest northing, then easting); the half-width is the
    ``ceil(fraction * N)``-th smallest Chebyshev distance from it, plus 1 mm, so at least that many
    positions lie strictly inside.

    Args:
        positions: ``(N, 2)`` ``[northing, easting]`` of the training-region sub-maps (all runs).
        fraction: in ``[0, 1)``; 0 gives no square.

    Returns:
        ``[]`` or ``[(northing, easting, half_width)]``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    count = math.ceil(fraction * len(positions))
    if count == 0:
        return []
    if avoid_centres:
        avoid = np.asarray(avoid_centres, dtype=np.float64).reshape(-1, 2)
        clearance = np.min(np.linalg.norm(positions[:, None, :] - avoid[None, :, :], axis=2), axis=1)
    else:  # no test region: start from the northernmost sub-map
        clearance = positions[:, 0]
    order = np.lexsort((positions[:, 1], positions[:, 0], -clearance))
    centre = positions[order[0]]
    chebyshev = np.sort(np.max(np.abs(positions - centre), axis=1))
    half_width = float(chebyshev[count - 1]) + 1e-3
    return [(float(centre[0]), float(centre[1]), half_width)]


# ---------------------------------------------------------------------------
# Runs and sets
# ---------------------------------------------------------------------------
def list_oxford_runs(dataset_dir: PathLike, locations_csv: str) -> list[str]:
    """Sorted run names under ``<dataset_dir>/oxford`` that have the given locations CSV."""
    runs_dir = Path(dataset_dir) / OXFORD_RUNS_FOLDER
    if not runs_dir.is_dir():
        raise MissingDataError(f"{runs_dir}: runs folder not found (expected <dataset_dir>/oxford/<run>/...)")
    return sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and (p / locations_csv).is_file())


@dataclass
class RunLocations:
    """The sub-maps of one run from its locations CSV."""

    run: str
    rel_paths: list[str]
    timestamps: np.ndarray  # (N,) int64
    positions: np.ndarray  # (N, 2) float64 [northing, easting]


def read_run_locations(dataset_dir: PathLike, run: str, cloud_folder: str, locations_csv: str,
                       check_files: bool = True) -> RunLocations:
    """Read a run's CSV; rel paths are ``oxford/<run>/<cloud_folder>/<ts>.bin``.

    Raises:
        DataFormatError: bad CSV, or (``check_files``) a listed cloud file is missing.
    """
    dataset_dir = Path(dataset_dir)
    csv_path = dataset_dir / OXFORD_RUNS_FOLDER / run / locations_csv
    frame = read_locations_csv(csv_path)
    timestamps = frame["timestamp"].to_numpy(dtype=np.int64)
    rel_paths = [f"{OXFORD_RUNS_FOLDER}/{run}/{cloud_folder}/{ts}.bin" for ts in timestamps.tolist()]
    if check_files:
        for rel in rel_paths:
            if not (dataset_dir / rel).is_file():
                raise MissingDataError(f"{dataset_dir / rel}: cloud listed in {csv_path} not found")
    positions = frame[["northing", "easting"]].to_numpy(dtype=np.float64)
    return RunLocations(run, rel_paths, timestamps, positions)


def make_training_tuples(rel_paths: Sequence[str], timestamps: np.ndarray, positions: np.ndarray,
                         positive_radius: float = POSITIVE_RADIUS_M,
                         non_negative_radius: float = NON_NEGATIVE_RADIUS_M) -> dict[int, TrainingTuple]:
    """Training tuples over sub-maps of all training runs (one KD-tree).

    Args:
        rel_paths: N cloud paths; timestamps: ``(N,)``; positions: ``(N, 2)`` ``[northing, easting]``.

    Returns:
        ``{id: TrainingTuple}`` with ids 0..N-1 in input order; ``positives`` = ids with distance
        ``<= positive_radius`` except self; ``non_negatives`` = ids with distance
        ``<= non_negative_radius`` including self; both sorted int64.
    """
    from sklearn.neighbors import KDTree

    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    tuples: dict[int, TrainingTuple] = {}
    if len(positions) == 0:
        return tuples
    tree = KDTree(positions)
    positives = tree.query_radius(positions, r=positive_radius)
    non_negatives = tree.query_radius(positions, r=non_negative_radius)
    for i, rel in enumerate(rel_paths):
        pos = np.sort(positives[i].astype(np.int64))
        pos = pos[pos != i]
        non_neg = np.sort(non_negatives[i].astype(np.int64))
        tuples[i] = TrainingTuple(i, int(timestamps[i]), rel, pos, non_neg, positions[i].copy())
    return tuples


def make_evaluation_sets(database_runs: Sequence[RunLocations], query_masks: Sequence[np.ndarray],
                         true_neighbour_radius: float = TRUE_NEIGHBOUR_RADIUS_M,
                         database_masks: Sequence[np.ndarray] | None = None,
                         ) -> tuple[list[dict[int, dict[Any, Any]]], list[dict[int, dict[Any, Any]]]]:
    """Evaluation database and query sets in the PointNetVLAD pickle format.

    Args:
        database_runs: one :class:`RunLocations` per run.
        query_masks: per run, ``(N_run,)`` bool: which sub-maps are queries.
        database_masks: per run, which sub-maps enter the database (default all).

    Returns:
        ``(database_sets, query_sets)``: lists of ``{k: {'query', 'northing', 'easting'}}``; query
        entries also map every other run index ``i`` to the sorted database-``i`` indices within
        ``true_neighbour_radius`` (distance ``<= r``).
    """
    from sklearn.neighbors import KDTree

    database_sets: list[dict[int, dict[Any, Any]]] = []
    query_sets: list[dict[int, dict[Any, Any]]] = []
    db_positions: list[np.ndarray] = []
    for r, run in enumerate(database_runs):
        keep = np.ones(len(run.rel_paths), bool) if database_masks is None else np.asarray(database_masks[r], bool)
        entries: dict[int, dict[Any, Any]] = {}
        for i in np.flatnonzero(keep).tolist():
            entries[len(entries)] = {"query": run.rel_paths[i], "northing": float(run.positions[i, 0]),
                                     "easting": float(run.positions[i, 1])}
        database_sets.append(entries)
        db_positions.append(run.positions[keep])
    trees = [KDTree(p) if len(p) else None for p in db_positions]
    for j, run in enumerate(database_runs):
        mask = np.asarray(query_masks[j], bool)
        q_index = np.flatnonzero(mask)
        q_positions = run.positions[q_index]
        neighbours: dict[int, list[np.ndarray]] = {}
        for i, tree in enumerate(trees):
            if i == j:
                continue
            if tree is None or len(q_positions) == 0:
                neighbours[i] = [np.zeros(0, np.int64)] * len(q_positions)
            else:
                neighbours[i] = list(tree.query_radius(q_positions, r=true_neighbour_radius))
        entries = {}
        for n, i_row in enumerate(q_index.tolist()):
            entry: dict[Any, Any] = {"query": run.rel_paths[i_row], "northing": float(run.positions[i_row, 0]),
                                     "easting": float(run.positions[i_row, 1])}
            for i in neighbours:
                entry[i] = sorted(int(x) for x in neighbours[i][n])
            entries[n] = entry
        query_sets.append(entries)
    return database_sets, query_sets


@dataclass
class BenchmarkSplits:
    """What :func:`build_oxford_benchmark` built (and wrote)."""

    training_tuples: dict[int, TrainingTuple]
    test_database: list[dict[int, dict[Any, Any]]]
    test_query: list[dict[int, dict[Any, Any]]]
    validation_database: list[dict[int, dict[Any, Any]]]
    validation_query: list[dict[int, dict[Any, Any]]]
    train_runs: list[str]
    eval_runs: list[str]
    validation_runs: list[str]
    validation_squares: list[Square]
    test_squares: list[Square]
    #: Training-region sub-maps dropped from training: inside validation squares / in the guard band.
    removed_for_validation: int = 0
    removed_for_guard: int = 0
    written: list[Path] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """Counts for printing."""
        return {
            "train_runs": len(self.train_runs),
            "training_tuples": len(self.training_tuples),
            "test_database": [len(s) for s in self.test_database],
            "test_query": [len(s) for s in self.test_query],
            "validation_database": [len(s) for s in self.validation_database],
            "validation_query": [len(s) for s in self.validation_query],
            "validation_squares": self.validation_squares,
            "removed_for_validation": self.removed_for_validation,
            "removed_for_guard": self.removed_for_guard,
        }


def build_oxford_benchmark(
    dataset_dir: PathLike,
    train_runs: Sequence[str] | None = None,
    eval_runs: Sequence[str] | None = None,
    validation_runs: Sequence[str] | None = None,
    validation_fraction: float | None = None,
    validation_squares: Sequence[Square] | None = None,
    validation_guard_m: float = NON_NEGATIVE_RADIUS_M,
    squares: Sequence[Square] | None = None,
    positive_radius: float = POSITIVE_RADIUS_M,
    non_negative_radius: float = NON_NEGATIVE_RADIUS_M,
    true_neighbour_radius: float = TRUE_NEIGHBOUR_RADIUS_M,
    check_files: bool = True,
    write: bool = True,
) -> BenchmarkSplits:
    """Build (and write) the training, test and validation sets of an Oxford-layout dataset.

    Args:
        dataset_dir: folder holding ``oxford/<run>/pointcloud_locations_20m[_10overlap].csv`` and clouds.
        train_runs: runs for training tuples. Default: the PointNetVLAD rule, every run with a
            ``pointcloud_locations_20m_10overlap.csv`` except the last in sorted order (all of them
            when there is only one).
        eval_runs: runs of the test database/query sets. Default: every run with a
            ``pointcloud_locations_20m.csv``.
        validation_runs: runs of the validation sets. Default: ``eval_runs``.
        validation_fraction: share of training-region sub-maps to hold out for validation when
            ``validation_squares`` is None (default ``DataConfig.validation_fraction``); 0 = none.
        validation_squares: explicit ``(northing, easting, half_width)`` squares; overrides the fraction.
        validation_guard_m: training sub-maps closer than this to a validation square are dropped.
        squares: test squares (default the four PointNetVLAD squares P1..P4, 150 m half-width).
        positive_radius, non_negative_radius, true_neighbour_radius: the rules' radii (10/50/25 m).
        check_files: every cloud listed in a CSV must exist.
        write: write the five pickles and ``validation_squares.json`` into ``dataset_dir`` (atomically).

    Returns:
        :class:`BenchmarkSplits`.

    Raises:
        DataFormatError: missing folders/CSVs/clouds, unknown run names.
    """
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise MissingDataError(f"{dataset_dir}: dataset folder not found")
    squares = oxford_test_squares() if squares is None else [tuple(map(float, s)) for s in squares]  # type: ignore[misc]
    if validation_fraction is None:
        validation_fraction = DataConfig().validation_fraction

    available_train = list_oxford_runs(dataset_dir, TRAINING_LOCATIONS_CSV)
    available_eval = list_oxford_runs(dataset_dir, EVALUATION_LOCATIONS_CSV)
    if train_runs is None:
        train_runs = available_train[:-1] if len(available_train) > 1 else list(available_train)
    if eval_runs is None:
        eval_runs = list(available_eval)
    if validation_runs is None:
        validation_runs = list(eval_runs)
    for name, runs, available, csv in (("train", train_runs, available_train, TRAINING_LOCATIONS_CSV),
                                       ("eval", eval_runs, available_eval, EVALUATION_LOCATIONS_CSV),
                                       ("validation", validation_runs, available_eval, EVALUATION_LOCATIONS_CSV)):
        unknown = [r for r in runs if r not in available]
        if unknown:
            raise MissingDataError(
                f"{dataset_dir / OXFORD_RUNS_FOLDER}: {name} run(s) {unknown} have no {csv}; available: {available}")

    # Training region: training-run sub-maps outside the test squares.
    train_locations = [read_run_locations(dataset_dir, r, TRAINING_CLOUD_FOLDER, TRAINING_LOCATIONS_CSV, check_files)
                       for r in train_runs]
    rel_paths = [p for loc in train_locations for p in loc.rel_paths]
    timestamps = np.concatenate([loc.timestamps for loc in train_locations]) if train_locations else np.zeros(0, np.int64)
    positions = (np.concatenate([loc.positions for loc in train_locations]) if train_locations
                 else np.zeros((0, 2)))
    in_training_region = ~in_squares(positions, squares)

    if validation_squares is None:
        validation_squares = choose_validation_squares(positions[in_training_region], validation_fraction,
                                                       [(n, e) for n, e, _ in squares])
    validation_squares = [tuple(map(float, s)) for s in validation_squares]  # type: ignore[misc]
    for v in validation_squares:
        if len(v) != 3 or v[2] <= 0:
            raise ValueError(f"validation square {v} must be (northing, easting, half_width > 0)")

    in_validation = in_squares(positions, validation_squares) & in_training_region
    in_guard = (distance_to_squares(positions, validation_squares) < validation_guard_m) & in_training_region & ~in_validation
    keep = in_training_region & ~in_validation & ~in_guard
    kept = np.flatnonzero(keep)
    training_tuples = make_training_tuples([rel_paths[i] for i in kept], timestamps[kept], positions[kept],
                                           positive_radius, non_negative_radius)

    # Test sets.
    eval_locations = {r: read_run_locations(dataset_dir, r, EVALUATION_CLOUD_FOLDER, EVALUATION_LOCATIONS_CSV, check_files)
                      for r in sorted(set(eval_runs) | set(validation_runs))}
    eval_list = [eval_locations[r] for r in eval_runs]
    test_database, test_query = make_evaluation_sets(
        eval_list, [in_squares(loc.positions, squares) for loc in eval_list], true_neighbour_radius)

    # Validation sets: outside the test region; queries inside the validation squares.
    val_list = [eval_locations[r] for r in validation_runs]
    if validation_squares:
        outside_test = [~in_squares(loc.positions, squares) for loc in val_list]
        val_masks = [in_squares(loc.positions, validation_squares) & outside_test[k] for k, loc in enumerate(val_list)]
        validation_database, validation_query = make_evaluation_sets(val_list, val_masks, true_neighbour_radius,
                                                                     database_masks=outside_test)
    else:
        validation_database, validation_query = [], []

    splits = BenchmarkSplits(
        training_tuples=training_tuples, test_database=test_database, test_query=test_query,
        validation_database=validation_database, validation_query=validation_query,
        train_runs=list(train_runs), eval_runs=list(eval_runs), validation_runs=list(validation_runs),
        validation_squares=list(validation_squares), test_squares=list(squares),
        removed_for_validation=int(in_validation.sum()), removed_for_guard=int(in_guard.sum()),
    )
    if write:
        outputs = [
            (TRAINING_PICKLE, training_tuples),
            (TEST_DATABASE_PICKLE, test_database),
            (TEST_QUERY_PICKLE, test_query),
            (VALIDATION_DATABASE_PICKLE, validation_database),
            (VALIDATION_QUERY_PICKLE, validation_query),
        ]
        for name, obj in outputs:
            save_pickle(dataset_dir / name, obj)
            splits.written.append(dataset_dir / name)
        splits.written.append(write_validation_squares(dataset_dir, splits, validation_fraction, validation_guard_m))
    return splits


def write_validation_squares(dataset_dir: PathLike, splits: BenchmarkSplits, validation_fraction: float,
                             validation_guard_m: float = NON_NEGATIVE_RADIUS_M) -> Path:
    """Write ``validation_squares.json`` (the squares, how they were chosen, the runs) atomically; returns its path."""
    path = Path(dataset_dir) / VALIDATION_SQUARES_JSON
    squares_info = {
        "validation_squares": [list(v) for v in splits.validation_squares],
        "validation_fraction": validation_fraction,
        "validation_guard_m": validation_guard_m,
        "validation_runs": list(splits.validation_runs),
        "test_squares": [list(s) for s in splits.test_squares],
        "train_runs": list(splits.train_runs),
        "eval_runs": list(splits.eval_runs),
    }
    with atomic_write(path, "w") as f:
        json.dump(squares_info, f, indent=2)
    return path


# ---------------------------------------------------------------------------
# LiDAR -> image index
# ---------------------------------------------------------------------------
def build_lidar2image_ndx(lidar_timestamps: Sequence[int], image_timestamps: Sequence[int], k: int = 20
                          ) -> dict[int, list[int]]:
    """For each LiDAR timestamp, the ``k`` temporally nearest image timestamps, nearest first.

    Ties are broken by the earlier image. Returns ``{lidar_ts: [image_ts, ...]}`` (at most
    ``len(image_timestamps)`` entries per list).
    """
    images = np.unique(np.asarray(image_timestamps, dtype=np.int64))
    if images.size == 0:
        raise ValueError("no image timestamps")
    out: dict[int, list[int]] = {}
    for ts in np.asarray(lidar_timestamps, dtype=np.int64).tolist():
        gap = np.abs(images - ts)
        order = np.lexsort((images, gap))[:k]
        out[int(ts)] = [int(x) for x in images[order]]
    return out


def write_lidar2image_ndx(path: PathLike, ndx: dict[int, Sequence[int]]) -> None:
    """Write a ``{lidar_ts: [image_ts, ...]}`` index (nearest first) as a pickle, atomically.

    Values are stored as int64 lists (MinkLoc++ stores ``[image_ts x 20]``).
    """
    clean: dict[int, list[int]] = {}
    for key, value in ndx.items():
        values = [int(v) for v in value]
        if not values:
            raise DataFormatError(f"{path}: LiDAR timestamp {key} has no image")
        clean[int(key)] = values
    save_pickle(path, clean)


def read_lidar2image_ndx(path: PathLike) -> dict[int, list[int]]:
    """Read a LiDAR-to-image index (safe unpickler, validated)."""
    return load_lidar2image_ndx(path)
