"""Split rules on small hand-made CSV fixtures: radii, test squares, validation disjointness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distilvpr_lib.config import (
    NON_NEGATIVE_RADIUS_M,
    OXFORD_TEST_SQUARE_CENTRES,
    OXFORD_TEST_SQUARE_HALF_WIDTH_M,
    TRUE_NEIGHBOUR_RADIUS_M,
)
from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.data.locations import write_locations_csv
from distilvpr_lib.errors import DataFormatError, MissingDataError
from distilvpr_lib.data.splits import (
    EVALUATION_LOCATIONS_CSV,
    TRAINING_LOCATIONS_CSV,
    build_lidar2image_ndx,
    build_oxford_benchmark,
    choose_validation_squares,
    distance_to_squares,
    in_squares,
    read_lidar2image_ndx,
    oxford_test_squares,
    write_lidar2image_ndx,
)

P1_N, P1_E = OXFORD_TEST_SQUARE_CENTRES[0]
HALF = OXFORD_TEST_SQUARE_HALF_WIDTH_M


def _write_run(root: Path, run: str, north_offsets: list[float], east_offset: float = 0.0,
               csv: str = TRAINING_LOCATIONS_CSV, start: int = 1_000_000) -> None:
    ts = [start + 1000 * i for i in range(len(north_offsets))]
    write_locations_csv(root / "oxford" / run / csv, ts, [P1_N + d for d in north_offsets],
                        [P1_E + east_offset] * len(north_offsets))


def _route_dataset(root: Path, n_runs: int = 3, length: float = 600.0, step: float = 10.0) -> None:
    """Every run drives north from P1's centre; small per-run easting offsets."""
    for r in range(n_runs):
        run = f"2014-05-0{r + 1}-10-00-00"
        _write_run(root, run, list(np.arange(0, length, step)), east_offset=1.0 * r, start=10**9 * (r + 1))
        _write_run(root, run, list(np.arange(0, length, 2 * step) + 0.5), east_offset=1.0 * r,
                   csv=EVALUATION_LOCATIONS_CSV, start=10**9 * (r + 1) + 7)


# ---------------------------------------------------------------- regions
def test_test_squares_strict_membership() -> None:
    squares = oxford_test_squares()
    assert len(squares) == 4 and squares[0] == (P1_N, P1_E, HALF)
    positions = np.array([[P1_N, P1_E], [P1_N + HALF - 0.01, P1_E], [P1_N + HALF, P1_E], [P1_N + HALF + 1, P1_E],
                          [P1_N, P1_E - HALF + 1], [0.0, 0.0]])
    assert in_squares(positions, squares).tolist() == [True, True, False, False, True, False]
    d = distance_to_squares(np.array([[P1_N + HALF + 30, P1_E], [P1_N, P1_E]]), squares[:1])
    assert d == pytest.approx([30.0, 0.0])


def test_choose_validation_squares_fraction_and_determinism() -> None:
    rng = np.random.default_rng(0)
    positions = np.c_[P1_N + 200 + rng.uniform(0, 800, 400), P1_E + rng.uniform(-20, 20, 400)]
    squares = choose_validation_squares(positions, 0.15)
    assert squares == choose_validation_squares(positions[::-1].copy(), 0.15)  # order-independent
    inside = in_squares(positions, squares)
    assert inside.sum() >= 60 and inside.sum() <= 70
    # the far end of the route (away from the test squares)
    assert squares[0][0] > P1_N + 800
    assert choose_validation_squares(positions, 0.0) == []
    with pytest.raises(ValueError, match="fraction"):
        choose_validation_squares(positions, 1.0)


# ---------------------------------------------------------------- training tuples
def test_training_tuples_radii_and_test_region(tmp_path: Path) -> None:
    # offsets north of P1's centre: 0..140 inside the test square; 151 outside
    base = HALF + 1.0
    offsets = [0.0, 140.0, base, base + 9.0, base + 11.0, base + 45.0, base + 55.0]
    _write_run(tmp_path, "2014-05-01-10-00-00", offsets)
    _write_run(tmp_path, "2014-05-02-10-00-00", [0.0])  # the last run is not a training run by default
    splits = build_oxford_benchmark(tmp_path, check_files=False, validation_fraction=0.0, write=False)
    assert splits.train_runs == ["2014-05-01-10-00-00"]
    tuples = splits.training_tuples
    assert [t.position[0] - P1_N for t in tuples.values()] == pytest.approx(offsets[2:])  # test region excluded
    assert sorted(tuples) == list(range(5))
    first = tuples[0]
    assert first.positives.dtype == np.int64 and first.positives.tolist() == [1]  # 9 m: yes, 11 m: no
    assert first.non_negatives.tolist() == [0, 1, 2, 3]  # self included, 45 m yes, 55 m no
    assert tuples[1].positives.tolist() == [0, 2]  # 9 m and 2 m away
    for t in tuples.values():
        assert t.id not in t.positives.tolist() and t.id in t.non_negatives.tolist()
        assert np.all(np.diff(t.positives) > 0) and np.all(np.diff(t.non_negatives) > 0)
        assert t.rel_scan_filepath == f"oxford/2014-05-01-10-00-00/pointcloud_20m_10overlap/{t.timestamp}.bin"


def test_training_tuples_match_brute_force(tmp_path: Path) -> None:
    _route_dataset(tmp_path)
    splits = build_oxford_benchmark(tmp_path, check_files=False, validation_fraction=0.0, write=False)
    tuples = splits.training_tuples
    positions = np.array([t.position for t in tuples.values()])
    distance = np.linalg.norm(positions[:, None] - positions[None], axis=2)
    for i, t in tuples.items():
        assert t.positives.tolist() == [j for j in np.flatnonzero(distance[i] <= 10.0) if j != i]
        assert t.non_negatives.tolist() == np.flatnonzero(distance[i] <= 50.0).tolist()
    assert not in_squares(positions, oxford_test_squares()).any()
    assert {t.rel_scan_filepath.split("/")[1] for t in tuples.values()} == {"2014-05-01-10-00-00", "2014-05-02-10-00-00"}


# ---------------------------------------------------------------- evaluation sets
def test_evaluation_sets(tmp_path: Path) -> None:
    _route_dataset(tmp_path)
    splits = build_oxford_benchmark(tmp_path, check_files=False, validation_fraction=0.0, write=False)
    assert splits.eval_runs == ["2014-05-01-10-00-00", "2014-05-02-10-00-00", "2014-05-03-10-00-00"]
    assert [len(s) for s in splits.test_database] == [30, 30, 30]  # all sub-maps of each run
    for j, query in enumerate(splits.test_query):
        assert len(query) == 8  # 0.5 .. 140.5 m: inside P1
        for entry in query.values():
            assert in_squares(np.array([[entry["northing"], entry["easting"]]]), oxford_test_squares()).all()
            assert j not in entry
            for i, database in enumerate(splits.test_database):
                if i == j:
                    continue
                brute = [k for k, e in database.items()
                         if np.hypot(e["northing"] - entry["northing"], e["easting"] - entry["easting"])
                         <= TRUE_NEIGHBOUR_RADIUS_M]
                assert entry[i] == brute and len(brute) >= 1


# ---------------------------------------------------------------- validation
def test_validation_split_is_disjoint_from_training(tmp_path: Path) -> None:
    _route_dataset(tmp_path, length=900.0)
    splits = build_oxford_benchmark(tmp_path, check_files=False)  # default fraction from DataConfig
    assert len(splits.validation_squares) == 1
    val_queries = np.array([[e["northing"], e["easting"]] for q in splits.validation_query for e in q.values()])
    assert len(val_queries) > 0
    assert in_squares(val_queries, splits.validation_squares).all()
    assert not in_squares(val_queries, oxford_test_squares()).any()
    train = np.array([t.position for t in splits.training_tuples.values()])
    assert not in_squares(train, splits.validation_squares).any()
    gap = np.linalg.norm(train[:, None] - val_queries[None], axis=2).min()
    assert gap >= NON_NEGATIVE_RADIUS_M  # no training tuple (nor its non-negatives) near a validation query
    assert distance_to_squares(train, splits.validation_squares).min() >= NON_NEGATIVE_RADIUS_M
    assert splits.removed_for_validation > 0 and splits.removed_for_guard > 0
    # validation database: the runs' sub-maps outside the test region
    for database in splits.validation_database:
        pos = np.array([[e["northing"], e["easting"]] for e in database.values()])
        assert not in_squares(pos, oxford_test_squares()).any() and len(database) == 45 - 8
    # true neighbours index the validation database
    for j, query in enumerate(splits.validation_query):
        for entry in query.values():
            for i, database in enumerate(splits.validation_database):
                if i != j:
                    brute = [k for k, e in database.items()
                             if np.hypot(e["northing"] - entry["northing"], e["easting"] - entry["easting"]) <= 25.0]
                    assert entry[i] == brute
    # deterministic
    again = build_oxford_benchmark(tmp_path, check_files=False, write=False)
    assert again.validation_squares == splits.validation_squares
    assert len(again.training_tuples) == len(splits.training_tuples)


def test_explicit_validation_squares_and_none(tmp_path: Path) -> None:
    _route_dataset(tmp_path, length=900.0)
    square = (P1_N + 500.0, P1_E, 40.0)
    splits = build_oxford_benchmark(tmp_path, check_files=False, validation_squares=[square], write=False)
    assert splits.validation_squares == [square]
    north = np.array([t.position[0] for t in splits.training_tuples.values()]) - P1_N
    assert not np.any((north > 500 - 40 - 50) & (north < 500 + 40 + 50))
    none = build_oxford_benchmark(tmp_path, check_files=False, validation_fraction=0.0, write=False)
    assert none.validation_squares == [] and none.validation_query == [] and none.removed_for_guard == 0


# ---------------------------------------------------------------- writing and errors
def test_written_files_load_and_no_temp_files(tmp_path: Path) -> None:
    _route_dataset(tmp_path, length=900.0)
    splits = build_oxford_benchmark(tmp_path, check_files=False)
    names = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert names == ["oxford_evaluation_database.pickle", "oxford_evaluation_query.pickle",
                     "training_queries_baseline.pickle", "validation_evaluation_database.pickle",
                     "validation_evaluation_query.pickle", "validation_squares.json"]
    benchmark = Benchmark.load(tmp_path)
    assert benchmark.training_tuples == splits.training_tuples
    assert benchmark.query_sets("validation") == splits.validation_query
    assert benchmark.database_sets("test") == splits.test_database
    assert benchmark.validation_squares == [tuple(s) for s in splits.validation_squares]


def test_missing_cloud_and_bad_csv(tmp_path: Path) -> None:
    _route_dataset(tmp_path, n_runs=2)
    with pytest.raises(MissingDataError, match=r"pointcloud_20m_10overlap/\d+\.bin: cloud listed in .*csv not found"):
        build_oxford_benchmark(tmp_path, check_files=True)
    bad = tmp_path / "oxford" / "2014-05-01-10-00-00" / TRAINING_LOCATIONS_CSV
    bad.write_text("timestamp,north,east\n1,2,3\n")
    with pytest.raises(DataFormatError, match=r"missing column\(s\) \['northing', 'easting'\]"):
        build_oxford_benchmark(tmp_path, check_files=False)
    assert not (tmp_path / "training_queries_baseline.pickle").exists()  # nothing partially written
    with pytest.raises(MissingDataError, match="not found"):
        build_oxford_benchmark(tmp_path / "nope")
    with pytest.raises(MissingDataError, match=r"run\(s\) \['xx'\]"):
        build_oxford_benchmark(tmp_path, eval_runs=["xx"], check_files=False)


def test_lidar2image_ndx(tmp_path: Path) -> None:
    ndx = build_lidar2image_ndx([100, 200], [90, 105, 180, 260, 300], k=3)
    assert ndx == {100: [105, 90, 180], 200: [180, 260, 105]}
    write_lidar2image_ndx(tmp_path / "lidar2image_ndx.pickle", ndx)
    assert read_lidar2image_ndx(tmp_path / "lidar2image_ndx.pickle") == ndx


def test_validation_on_a_loop_around_a_test_square(tmp_path: Path) -> None:
    """A generator-like route: a 1.2 km square loop, partly inside P1, the rest in the training region."""
    side = 300.0
    corners = np.array([[0, 0], [side, 0], [side, side], [0, side], [0, 0]], dtype=float) + [-100.0, -100.0]
    for r in range(3):
        run = f"2014-06-0{r + 1}-10-00-00"
        for csv, step, start in ((TRAINING_LOCATIONS_CSV, 10.0, 0), (EVALUATION_LOCATIONS_CSV, 20.0, 7)):
            points = []
            for a, b in zip(corners[:-1], corners[1:]):
                for t in np.arange(0, side, step):
                    points.append(a + (b - a) * t / side)
            points = np.array(points) + np.random.default_rng(r).uniform(-2, 2, (len(points), 2))
            ts = [10**9 * (r + 1) + start + 1000 * i for i in range(len(points))]
            write_locations_csv(tmp_path / "oxford" / run / csv, ts, P1_N + points[:, 0], P1_E + points[:, 1])
    splits = build_oxford_benchmark(tmp_path, check_files=False, write=False)
    assert sum(map(len, splits.test_query)) > 0 and len(splits.training_tuples) > 0
    val_queries = np.array([[e["northing"], e["easting"]] for q in splits.validation_query for e in q.values()])
    assert len(val_queries) > 0
    train = np.array([t.position for t in splits.training_tuples.values()])
    assert np.linalg.norm(train[:, None] - val_queries[None], axis=2).min() >= NON_NEGATIVE_RADIUS_M
    assert not in_squares(val_queries, oxford_test_squares()).any()
    # the square is at the far corner of the loop, away from P1
    north, east, _ = splits.validation_squares[0]
    assert np.hypot(north - P1_N, east - P1_E) > 250
