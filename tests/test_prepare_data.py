"""``distilvpr prepare-data``: the PointNetVLAD rules on real Oxford files, the authors' files kept, ``--force``."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from distilvpr_lib.cli import main
from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, OXFORD_TEST_SQUARE_HALF_WIDTH_M, TRUE_NEIGHBOUR_RADIUS_M
from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.data.pickles import load_evaluation_sets, load_training_tuples, save_pickle
from distilvpr_lib.data.prepare import REBUILT_SUFFIX, comparable_content
from distilvpr_lib.data.splits import (
    TEST_DATABASE_PICKLE,
    TEST_QUERY_PICKLE,
    TRAINING_PICKLE,
    VALIDATION_DATABASE_PICKLE,
    VALIDATION_QUERY_PICKLE,
    VALIDATION_SQUARES_JSON,
    build_oxford_benchmark,
)

def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture()
def oxford_copy(oxford_real_dir: Path, tmp_path: Path) -> Path:
    """A writable copy of the real Oxford fixture (the shared folder is never written)."""
    out = tmp_path / "oxford_dh3d"
    shutil.copytree(oxford_real_dir, out)
    for path in out.rglob("*"):
        path.chmod(path.stat().st_mode | 0o200)
    return out


def _inside_test_squares(positions: np.ndarray) -> np.ndarray:
    centres = np.asarray(OXFORD_TEST_SQUARE_CENTRES)
    chebyshev = np.max(np.abs(positions[:, None, :] - centres[None]), axis=2)
    return (chebyshev < OXFORD_TEST_SQUARE_HALF_WIDTH_M).any(axis=1)


@pytest.mark.real_data
def test_real_oxford_files_are_kept_and_the_rebuilt_query_set_follows_the_rules(
        oxford_copy: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: _md5(p) for p in oxford_copy.glob("*.pickle")}
    assert main(["prepare-data", str(oxford_copy)]) == 0
    out = capsys.readouterr().out
    assert {p.name: _md5(p) for p in oxford_copy.glob("*.pickle") if p.name in before} == before, "authors' files changed"
    assert f"{TEST_DATABASE_PICKLE}: kept (same content" in out  # every sub-map of each run: the rules agree
    assert f"{TEST_QUERY_PICKLE}: kept, rebuilt beside" in out and "no validation split" in out
    assert not (oxford_copy / TRAINING_PICKLE).exists()  # no training CSVs in the fixture

    # The rebuilt query set, checked against the rules computed here: sub-maps strictly inside a 150 m test
    # square, with for every other run the database indices within 25 m.
    database = load_evaluation_sets(oxford_copy / TEST_DATABASE_PICKLE, "database")
    rebuilt = load_evaluation_sets(oxford_copy / (Path(TEST_QUERY_PICKLE).stem + REBUILT_SUFFIX), "query")
    positions = [np.array([[e["northing"], e["easting"]] for e in run.values()]) for run in database]
    for run, (run_positions, queries) in enumerate(zip(positions, rebuilt)):
        inside = np.flatnonzero(_inside_test_squares(run_positions))
        assert [e["query"] for e in queries.values()] == [database[run][k]["query"] for k in inside]
        for entry, k in zip(queries.values(), inside):
            for other in range(len(database)):
                if other == run:
                    assert other not in entry
                    continue
                distances = np.linalg.norm(positions[other] - run_positions[k], axis=1)
                assert entry[other] == list(np.flatnonzero(distances <= TRUE_NEIGHBOUR_RADIUS_M))
    assert Benchmark.load(oxford_copy).query_sets("test")[0].__len__() == 50  # the loader still reads the authors'


@pytest.mark.real_data
def test_force_replaces_the_authors_query_set(oxford_copy: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare-data", str(oxford_copy), "--force"]) == 0
    assert f"{TEST_QUERY_PICKLE}: replaced" in capsys.readouterr().out
    queries = Benchmark.load(oxford_copy).query_sets("test")
    database = load_evaluation_sets(oxford_copy / TEST_DATABASE_PICKLE, "database")
    expected = [int(_inside_test_squares(np.array([[e["northing"], e["easting"]] for e in run.values()])).sum())
                for run in database]
    assert [len(q) for q in queries] == expected and 0 < sum(expected) < 100


def test_a_benchmark_is_rebuilt_exactly_with_its_validation_split(smoke_dataset: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """On a folder with training CSVs (the generated Oxford layout): the pickles and validation files equal
    the generator's; an 'authors'' training pickle without a validation hold-out is kept, flagged, replaced
    with --force."""
    folder = tmp_path / "data"
    shutil.copytree(smoke_dataset, folder)
    names = [TRAINING_PICKLE, TEST_DATABASE_PICKLE, TEST_QUERY_PICKLE, VALIDATION_DATABASE_PICKLE,
             VALIDATION_QUERY_PICKLE]
    generated = {n: comparable_content(load_training_tuples(folder / n) if n == TRAINING_PICKLE else
                           load_evaluation_sets(folder / n, "query" if "query" in n else "database")) for n in names}
    squares = (folder / VALIDATION_SQUARES_JSON).read_text()
    for name in (*names, VALIDATION_SQUARES_JSON):
        (folder / name).unlink()
    assert main(["prepare-data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{TRAINING_PICKLE}: written" in out and f"{VALIDATION_QUERY_PICKLE}: written" in out
    for name in names:
        loaded = (load_training_tuples(folder / name) if name == TRAINING_PICKLE else
                  load_evaluation_sets(folder / name, "query" if "query" in name else "database"))
        assert comparable_content(loaded) == generated[name], name
    assert (folder / VALIDATION_SQUARES_JSON).read_text() == squares
    assert Benchmark.load(folder).has_split("validation")

    # An 'authors'' training pickle built without a validation hold-out: kept, rebuilt beside, leak reported.
    no_holdout = build_oxford_benchmark(folder, validation_fraction=0.0, write=False).training_tuples
    save_pickle(folder / TRAINING_PICKLE, no_holdout)
    digest = _md5(folder / TRAINING_PICKLE)
    assert main(["prepare-data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{TRAINING_PICKLE}: kept, rebuilt beside" in out and "validation recalls are optimistic" in out
    assert _md5(folder / TRAINING_PICKLE) == digest
    rebuilt = load_training_tuples(folder / (Path(TRAINING_PICKLE).stem + REBUILT_SUFFIX))
    assert comparable_content(rebuilt) == generated[TRAINING_PICKLE] and len(rebuilt) < len(no_holdout)
    assert main(["prepare-data", str(folder), "--force"]) == 0
    out = capsys.readouterr().out
    assert f"{TRAINING_PICKLE}: replaced" in out and "optimistic" not in out
    assert comparable_content(load_training_tuples(folder / TRAINING_PICKLE)) == generated[TRAINING_PICKLE]


def test_boreas_and_missing_folders_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prepare-data", str(tmp_path), "--layout", "boreas"]) == 1
    assert "not published" in capsys.readouterr().err
    assert main(["prepare-data", str(tmp_path / "missing")]) == 1
    assert "not found" in capsys.readouterr().err
    assert main(["prepare-data", str(tmp_path)]) == 1
    assert "oxford: runs folder not found" in capsys.readouterr().err
    (tmp_path / "oxford" / "2015-03-10-14-18-10").mkdir(parents=True)
    assert main(["prepare-data", str(tmp_path)]) == 1
    assert "no run folders with" in capsys.readouterr().err
