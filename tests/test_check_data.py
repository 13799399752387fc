"""``distilvpr check-data``: summary on the real fixture and a toy dataset, exit 1 naming the bad file."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from distilvpr_lib.cli import main
from distilvpr_lib.data.pickles import load_pickle, save_pickle
from distilvpr_lib.data.toy import write_toy_oxford_dataset


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_oxford_dataset(tmp_path_factory.mktemp("toy"), n_runs=2, route_length_m=300.0)


def _copy(toy_dir: Path, tmp_path: Path) -> Path:
    """A hard-linked copy; files replaced atomically (or deleted) there leave the original intact."""
    copy = tmp_path / "copy"
    shutil.copytree(toy_dir, copy, copy_function=os.link)
    return copy


@pytest.mark.real_data
def test_check_data_real_fixture(oxford_real_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-data", str(oxford_real_dir)]) == 0
    out = capsys.readouterr().out
    assert "layout: oxford" in out
    assert re.search(r"^runs: 2 ", out, re.M)
    assert re.search(r"^submaps: 100 \(pointcloud_20m: 100\)", out, re.M)
    assert re.search(r"run 0 2015-03-10-14-18-10: database 50, query 50, .*another run: 38$", out, re.M)
    assert re.search(r"run 1 2015-11-13-10-28-08: database 50, query 50, .*another run: 37$", out, re.M)
    assert "training tuples: 0" in out and "images: none" in out and "validation split: absent" in out
    assert "OK: no problems found" in out


def test_check_data_toy_summary(toy_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-data", str(toy_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^runs: 2 ", out, re.M)
    assert re.search(r"^submaps: 90 \(pointcloud_20m: 30, pointcloud_20m_10overlap: 60\)", out, re.M)
    assert re.search(r"^images: (\d+) of \1 readable, of \d+ referenced submaps", out, re.M)
    assert re.search(r"^training tuples: [1-9]\d*", out, re.M)
    assert re.search(r"^validation split: 2 runs, database \d+ submaps, query [1-9]\d* submaps", out, re.M)
    assert "validation squares: N " in out


def _expect_failure(dataset: Path, fragment: str, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert main(["check-data", str(dataset), *extra]) == 1
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert fragment in text, text
    return text


def test_check_data_truncated_bin(toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(toy_dir, tmp_path)
    victim = sorted((copy / "oxford" / "2014-05-01-10-00-00" / "pointcloud_20m").glob("*.bin"))[3]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[:-100])
    text = _expect_failure(copy, str(victim), capsys)
    assert "expected 98304 bytes" in text


def test_check_data_missing_image(toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(toy_dir, tmp_path)
    tuples = load_pickle(copy / "training_queries_baseline.pickle")
    rel = tuples[0].rel_scan_filepath
    ndx = load_pickle(copy / "images" / "lidar2image_ndx.pickle")
    image = copy / "images" / rel.split("/")[1] / f"{ndx[int(Path(rel).stem)][0]}.png"
    image.unlink()
    text = _expect_failure(copy, str(image), capsys)
    assert rel in text


def test_check_data_missing_cloud_and_bad_csv(toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(toy_dir, tmp_path)
    victim = sorted((copy / "oxford" / "2014-05-02-10-00-00" / "pointcloud_20m_10overlap").glob("*.bin"))[-1]
    victim.unlink()
    _expect_failure(copy, f"{victim}: cloud listed in", capsys)
    csv = copy / "oxford" / "2014-05-01-10-00-00" / "pointcloud_locations_20m.csv"
    csv.unlink()
    csv.write_text("timestamp,northing\n1,2\n")
    _expect_failure(copy, f"{csv}: missing column(s) ['easting']", capsys)


def test_check_data_bad_pickles(toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = _copy(toy_dir, tmp_path)
    query_path = copy / "oxford_evaluation_query.pickle"
    query = load_pickle(query_path)
    del query[1][0]["northing"]
    query_path.unlink()
    save_pickle(query_path, query)
    _expect_failure(copy, f"{query_path}: run 1 entry 0 lacks key 'northing'", capsys)
    # wrong neighbour lists are caught against the positions
    query = load_pickle(toy_dir / "oxford_evaluation_query.pickle")
    query[0][0][1] = []
    query_path.unlink()
    save_pickle(query_path, query)
    _expect_failure(copy, f"{query_path}: 1 true-neighbour list(s) disagree", capsys)
    # a pickle that references an unknown global
    training = copy / "training_queries_baseline.pickle"
    training.unlink()
    training.write_bytes(b"\x80\x02cposix\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02.")
    _expect_failure(copy, f"{training}: refusing to load global 'posix.system'", capsys)


def test_check_data_missing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _expect_failure(tmp_path / "nowhere", f"{tmp_path / 'nowhere'}: dataset folder not found", capsys)


def test_check_data_explicit_image_dir(toy_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-data", str(toy_dir), "--image-dir", str(toy_dir / "images")]) == 0
    capsys.readouterr()
    _expect_failure(toy_dir, "image index not found", capsys, "--image-dir", str(tmp_path))
