"""On-disk formats: byte-exact .bin round trips, CSVs, the safe unpickler and every bad-input path."""

from __future__ import annotations

import os
import pickle
import pickletools
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from distilvpr_lib.data.clouds import (
    BIN_CLOUD_BYTES,
    read_bin,
    read_npy_cloud,
    run_from_path,
    timestamp_from_path,
    write_bin,
    write_npy_cloud,
)
from distilvpr_lib.data.files import atomic_output_path, atomic_write
from distilvpr_lib.data.locations import read_locations_csv, write_locations_csv
from distilvpr_lib.data.pickles import (
    TrainingTuple,
    load_evaluation_sets,
    load_pickle,
    load_training_tuples,
    save_pickle,
)
from distilvpr_lib.errors import DataFormatError, MissingDataError


def _cloud(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (4096, 3))


# ---------------------------------------------------------------- .bin
def test_bin_round_trip_is_byte_exact(tmp_path: Path) -> None:
    points = _cloud()
    path = tmp_path / "run" / "pointcloud_20m" / "1400505893170765.bin"
    write_bin(path, points)
    raw = path.read_bytes()
    assert len(raw) == BIN_CLOUD_BYTES == 98304
    assert raw == points.astype("<f8").tobytes(order="C")  # float64, little-endian, C order
    back = read_bin(path)
    assert back.dtype == np.float64 and back.shape == (4096, 3)
    assert np.array_equal(back, points)
    write_bin(tmp_path / "again.bin", back)
    assert (tmp_path / "again.bin").read_bytes() == raw
    # C order: the first 3 doubles are the first point
    assert np.array_equal(np.frombuffer(raw[:24], "<f8"), points[0])


def test_bin_accepts_fortran_and_float32_input(tmp_path: Path) -> None:
    points = np.asfortranarray(_cloud(1)).astype(np.float32)
    write_bin(tmp_path / "x.bin", points)
    assert np.array_equal(read_bin(tmp_path / "x.bin"), points.astype(np.float64))


@pytest.mark.parametrize("n_bytes, fragment", [
    (BIN_CLOUD_BYTES - 24, "4095 float64 points"),
    (BIN_CLOUD_BYTES + 24, "4097 float64 points"),
    (4096 * 3 * 4, "float32 data"),
    (0, "empty file"),
    (1001, "not a whole number"),
])
def test_bad_bin_size_names_file_and_counts(tmp_path: Path, n_bytes: int, fragment: str) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(b"\0" * n_bytes)
    with pytest.raises(DataFormatError) as info:
        read_bin(path)
    message = str(info.value)
    assert str(path) in message
    assert f"expected {BIN_CLOUD_BYTES} bytes" in message and f"got {n_bytes} bytes" in message
    assert fragment in message


def test_float32_cloud_with_right_size_reported_as_wrong_dtype(tmp_path: Path) -> None:
    # 8192 float32 points happen to have the float64 byte count: their values read as garbage
    path = tmp_path / "f32.bin"
    path.write_bytes(np.random.default_rng(0).uniform(-1, 1, 8192 * 3).astype(np.float32).tobytes())
    with pytest.raises(DataFormatError, match="wrong dtype") as info:
        read_bin(path)
    assert str(path) in str(info.value)


def test_write_bin_refuses_bad_shape_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"shape \(100, 3\)"):
        write_bin(tmp_path / "x.bin", np.zeros((100, 3)))
    bad = _cloud()
    bad[5, 1] = np.nan
    with pytest.raises(DataFormatError, match="NaN"):
        write_bin(tmp_path / "y.bin", bad)
    assert list(tmp_path.iterdir()) == []


def test_missing_bin(tmp_path: Path) -> None:
    with pytest.raises(MissingDataError, match="nope.bin"):
        read_bin(tmp_path / "nope.bin")
    assert issubclass(MissingDataError, FileNotFoundError)


def test_npy_round_trip_and_errors(tmp_path: Path) -> None:
    points = _cloud(2)
    write_npy_cloud(tmp_path / "run" / "lidar_1_4096_interval10" / "1606417230036848.npy", points, dtype=np.float64)
    back = read_npy_cloud(tmp_path / "run" / "lidar_1_4096_interval10" / "1606417230036848.npy")
    assert np.array_equal(back, points)
    np.save(tmp_path / "short.npy", points[:100])
    with pytest.raises(DataFormatError, match=r"short\.npy.*\(100, 3\)"):
        read_npy_cloud(tmp_path / "short.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataFormatError, match="obj.npy"):
        read_npy_cloud(tmp_path / "obj.npy")


def test_path_helpers() -> None:
    assert timestamp_from_path("oxford/2014-05-19-13-20-57/pointcloud_20m/1400505893170765.bin") == 1400505893170765
    assert run_from_path("oxford/2014-05-19-13-20-57/pointcloud_20m/1400505893170765.bin") == "2014-05-19-13-20-57"
    assert run_from_path("boreas-2020-11-26-13-58/lidar_1_4096_interval10/1606417230036848.npy") == "boreas-2020-11-26-13-58"
    with pytest.raises(DataFormatError, match="abc"):
        timestamp_from_path("x/y/abc.bin")


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("new partial")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_write(target, "w") as f:
        f.write("new")
    assert target.read_text() == "new"


def test_atomic_output_path_replaces_on_success_and_cleans_up_on_failure(tmp_path: Path) -> None:
    import errno

    from distilvpr_lib.errors import DiskFullError

    target = tmp_path / "cache.npy"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp.suffix == ".npy" and tmp != target
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy"]
    with pytest.raises(DiskFullError, match=r"cache\.npy: disk full"):  # a full disk names the file, not the temp
        with atomic_output_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy"]
    with atomic_output_path(target) as tmp:
        np.save(tmp, np.arange(3))
    assert np.load(target).tolist() == [0, 1, 2] and sorted(p.name for p in tmp_path.iterdir()) == ["cache.npy"]


# ---------------------------------------------------------------- CSV
def test_csv_round_trip(tmp_path: Path) -> None:
    ts = [1400505893170765, 1400505894170765]
    north = [5735712.768124, 5735722.123456789]
    east = [620084.402381, 620085.5]
    write_locations_csv(tmp_path / "loc.csv", ts, north, east)
    assert (tmp_path / "loc.csv").read_text().splitlines()[0] == "timestamp,northing,easting"
    frame = read_locations_csv(tmp_path / "loc.csv")
    assert list(frame.columns) == ["timestamp", "northing", "easting"]
    assert frame["timestamp"].dtype == np.int64 and frame["northing"].dtype == np.float64
    assert frame["timestamp"].tolist() == ts
    assert frame["northing"].tolist() == north and frame["easting"].tolist() == east


def test_csv_missing_columns_named(tmp_path: Path) -> None:
    path = tmp_path / "pointcloud_locations_20m.csv"
    path.write_text("timestamp,x,y\n1,2,3\n")
    with pytest.raises(DataFormatError) as info:
        read_locations_csv(path)
    message = str(info.value)
    assert str(path) in message and "'northing'" in message and "'easting'" in message


def test_csv_bad_values_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("timestamp,northing,easting\n1,2,3\n2,oops,4\n")
    with pytest.raises(DataFormatError, match=r"a\.csv.*'northing'.*line 3"):
        read_locations_csv(path)
    path.write_text("timestamp,northing,easting\n1,2,3\n1,2,3\n")
    with pytest.raises(DataFormatError, match="duplicate timestamp 1"):
        read_locations_csv(path)
    path.write_text("")
    with pytest.raises(DataFormatError, match=r"a\.csv.*empty"):
        read_locations_csv(path)


# ---------------------------------------------------------------- pickles
def _tuple(i: int, n: int = 3) -> TrainingTuple:
    return TrainingTuple(i, 1000 + i, f"oxford/r/pointcloud_20m_10overlap/{1000 + i}.bin",
                         np.array([j for j in range(n) if j != i], dtype=np.int64), np.arange(n, dtype=np.int64),
                         np.array([5735000.0 + i, 620000.0]))


def _pickle_as(obj: object, module: str, protocol: int = 4) -> bytes:
    """Pickle TrainingTuples as if their class lived in ``module`` (as the reference scripts did)."""
    fake = types.ModuleType(module)

    class ReferenceTuple:  # a stand-in with the reference class path
        pass

    ReferenceTuple.__module__ = module
    ReferenceTuple.__qualname__ = ReferenceTuple.__name__ = "TrainingTuple"
    fake.TrainingTuple = ReferenceTuple
    parts = module.split(".")
    saved = {name: sys.modules.get(name) for name in [".".join(parts[:k]) for k in range(1, len(parts) + 1)]}
    try:
        for k in range(1, len(parts)):
            sys.modules.setdefault(".".join(parts[:k]), types.ModuleType(".".join(parts[:k])))
        sys.modules[module] = fake

        def convert(t: TrainingTuple) -> object:
            o = ReferenceTuple()
            o.__dict__.update(t.__dict__)
            return o

        data = {k: convert(v) for k, v in obj.items()} if isinstance(obj, dict) else obj
        return pickle.dumps(data, protocol=protocol)
    finally:
        for name, value in saved.items():
            if value is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = value


# distilvpr_lib.data.formats: pickles this project wrote before formats.py was split into files / clouds / pickles ...
@pytest.mark.parametrize("module", ["datasets.oxford", "datasets.base_datasets", "__main__", "distilvpr_lib.data.formats"])
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_reference_training_pickles_load(tmp_path: Path, module: str, protocol: int) -> None:
    tuples = {i: _tuple(i) for i in range(3)}
    raw = _pickle_as(tuples, module, protocol)
    assert f"{module}".encode() in raw
    path = tmp_path / "training_queries_baseline.pickle"
    path.write_bytes(raw)
    loaded = load_training_tuples(path)
    assert set(loaded) == {0, 1, 2}
    for i in range(3):
        assert isinstance(loaded[i], TrainingTuple)
        assert loaded[i] == tuples[i]


def test_numpy1_pickle_paths_load(tmp_path: Path) -> None:
    """A pickle written by numpy 1.x names numpy.core.multiarray; rewrite our numpy-2 pickle that way."""
    obj = {"a": np.arange(4, dtype=np.int64), "s": np.float64(2.5)}
    raw = pickle.dumps(obj, protocol=2)
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    # protocol 2 writes GLOBAL 'module\nname\n' lines: swap the module path to numpy 1.x's
    raw1 = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    pickletools.dis(raw1, out=open(os.devnull, "w"))  # still a valid pickle
    (tmp_path / "np1.pickle").write_bytes(raw1)
    back = load_pickle(tmp_path / "np1.pickle")
    assert np.array_equal(back["a"], obj["a"]) and back["a"].dtype == np.int64
    assert back["s"] == 2.5 and isinstance(back["s"], np.float64)


def test_save_and_load_pickle_round_trip(tmp_path: Path) -> None:
    tuples = {i: _tuple(i) for i in range(3)}
    save_pickle(tmp_path / "t.pickle", tuples)
    assert load_training_tuples(tmp_path / "t.pickle") == tuples


class _Evil:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.target}",))


class _EvilOpen:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):  # noqa: ANN204
        return (open, (str(self.target), "w"))


@pytest.mark.parametrize("evil_class", [_Evil, _EvilOpen])
def test_malicious_pickle_is_refused_and_not_executed(tmp_path: Path, evil_class: type) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps({"x": evil_class(marker)}))
    with pytest.raises(DataFormatError) as info:
        load_pickle(path)
    message = str(info.value)
    assert str(path) in message and "refusing to load global" in message
    assert ("system" in message) or ("open" in message)
    assert not marker.exists()


def test_pickle_with_unknown_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "unknown.pickle"
    fake = types.ModuleType("some_module")

    class Thing:
        pass

    Thing.__module__, Thing.__qualname__ = "some_module", "Thing"
    fake.Thing = Thing
    sys.modules["some_module"] = fake
    try:
        raw = pickle.dumps({"payload": Thing()})
    finally:
        del sys.modules["some_module"]
    path.write_bytes(raw)
    with pytest.raises(DataFormatError, match=r"unknown\.pickle.*'some_module\.Thing'"):
        load_pickle(path)


def test_truncated_pickle(tmp_path: Path) -> None:
    raw = pickle.dumps({i: _tuple(i) for i in range(3)})
    (tmp_path / "cut.pickle").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFormatError, match=r"cut\.pickle.*corrupt"):
        load_pickle(tmp_path / "cut.pickle")


def test_evaluation_pickle_missing_keys(tmp_path: Path) -> None:
    good = {"query": "oxford/r/pointcloud_20m/1.bin", "northing": np.float64(1.0), "easting": np.float64(2.0)}
    for missing in ("query", "northing", "easting"):
        entry = {k: v for k, v in good.items() if k != missing}
        save_pickle(tmp_path / "db.pickle", [{0: good, 1: entry}])
        with pytest.raises(DataFormatError) as info:
            load_evaluation_sets(tmp_path / "db.pickle", "database")
        assert str(tmp_path / "db.pickle") in str(info.value) and repr(missing) in str(info.value)
    # query entries need a neighbour list for every other run
    save_pickle(tmp_path / "q.pickle", [{0: {**good, 1: [0]}}, {0: dict(good)}])
    with pytest.raises(DataFormatError, match=r"q\.pickle: run 1 entry 0 lacks the neighbour list for database run 0"):
        load_evaluation_sets(tmp_path / "q.pickle", "query")


def test_evaluation_values_are_normalised(tmp_path: Path) -> None:
    entry = {"query": "oxford/r/pointcloud_20m/1.bin", "northing": np.float64(1.5), "easting": np.float64(2.5),
             1: np.array([3, 1])}
    save_pickle(tmp_path / "q.pickle", [{0: entry}, {}])
    sets = load_evaluation_sets(tmp_path / "q.pickle", "query")
    assert type(sets[0][0]["northing"]) is float and sets[0][0][1] == [3, 1]


def test_training_pickle_bad_entries(tmp_path: Path) -> None:
    t = _tuple(0, 2)
    del t.non_negatives
    save_pickle(tmp_path / "t.pickle", {0: t, 1: _tuple(1, 2)})
    with pytest.raises(DataFormatError, match=r"t\.pickle: training entry 0 lacks attribute\(s\) \['non_negatives'\]"):
        load_training_tuples(tmp_path / "t.pickle")
    bad = _tuple(0, 5)  # references ids 3, 4 that do not exist
    save_pickle(tmp_path / "t.pickle", {0: bad, 1: _tuple(1, 2)})
    with pytest.raises(DataFormatError, match="outside 0..1"):
        load_training_tuples(tmp_path / "t.pickle")
    save_pickle(tmp_path / "t.pickle", [1, 2])
    with pytest.raises(DataFormatError, match="expected a dict of TrainingTuple"):
        load_training_tuples(tmp_path / "t.pickle")
