"""The generator's Boreas layout, driven along the real Boreas trajectories (real fixture)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distilvpr_lib.cli import main as cli_main
from distilvpr_lib.config import profile_config
from distilvpr_lib.data.clouds import read_npy_cloud
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.pickles import load_pickle
from distilvpr_lib.data.synth import generate_dataset
from distilvpr_lib.data.splits import (
    BOREAS_CLOUD_FOLDER,
    BOREAS_IMAGE_FOLDER,
    BOREAS_LOCATIONS_CSV,
    BOREAS_P0_FOLDER,
    BOREAS_T_CAMERA_LIDAR_FOLDER,
)
from distilvpr_lib.data.synth.boreas_world import load_real_drives
from distilvpr_lib.data.synth.skeleton import COMPLETE_FILE

pytestmark = pytest.mark.real_data
BOREAS_NAME = re.compile(r"^boreas-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}$")


@pytest.fixture(scope="module")
def boreas_poses(real_data_dir: Path) -> Path:
    path = real_data_dir / "boreas_poses"
    if not path.is_dir():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def boreas_dir(tmp_path_factory: pytest.TempPathFactory, boreas_poses: Path) -> Path:
    out = tmp_path_factory.mktemp("synth_boreas") / "smoke"
    assert cli_main(["synth", "--profile", "smoke", "--layout", "boreas", "--boreas-poses", str(boreas_poses),
                     "--out", str(out), "--no-progress"]) == 0
    return out


def start_of(name: str) -> int:
    """µs timestamp of a Boreas run name (UTC)."""
    import calendar
    import datetime as dt

    when = dt.datetime.strptime(name[len("boreas-"):], "%Y-%m-%d-%H-%M")
    return calendar.timegm(when.timetuple()) * 1_000_000


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_boreas_layout(boreas_dir: Path, boreas_poses: Path) -> None:
    cfg = profile_config("smoke").synth
    runs = sorted(p.name for p in boreas_dir.iterdir() if p.is_dir())
    assert len(runs) == cfg.n_runs and all(BOREAS_NAME.match(r) and len(r) == 23 for r in runs)
    ndx = load_pickle(boreas_dir / "boreas_lidar2image_ndx.pickle")
    drives = load_real_drives(boreas_poses)
    for run in runs:
        frame = read_locations_csv(boreas_dir / run / BOREAS_LOCATIONS_CSV)
        assert len(frame) >= 10
        step = np.median(np.hypot(np.diff(frame.northing), np.diff(frame.easting)))
        assert 8.0 < step < 12.0
        # UTM zone 17 around the real route
        assert np.all(np.abs(frame.easting - 623_000) < 3_000) and np.all(np.abs(frame.northing - 4_849_800) < 3_000)
        for ts in frame.timestamp.tolist()[::5]:
            cloud = read_npy_cloud(boreas_dir / run / BOREAS_CLOUD_FOLDER / f"{ts}.npy")
            assert cloud.dtype == np.float32 and cloud.shape == (4096, 3)
            assert 10.0 < np.abs(cloud[:, :2]).max() <= 50.0 + 1e-3  # metric, LiDAR frame
            assert (boreas_dir / run / BOREAS_P0_FOLDER / f"{ts}.txt").is_file()
            T = np.loadtxt(boreas_dir / run / BOREAS_T_CAMERA_LIDAR_FOLDER / f"{ts}.txt")
            assert T.shape == (4, 4) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
            image = boreas_dir / run / BOREAS_IMAGE_FOLDER / f"{ndx[ts][0]}.png"
            with Image.open(image) as im:
                assert im.size == (cfg.image_width, cfg.image_height)
    # every timestamp is a real LiDAR / camera timestamp of the source drive, shifted to the run's date
    import json

    manifest = json.loads((boreas_dir / "synth_manifest.json").read_text())
    by_name = {d.name: d for d in drives}
    for info in manifest["runs"]:
        drive = by_name[info["source_drive"]]
        shift = info["time_shift_us"]
        frame = read_locations_csv(boreas_dir / info["name"] / BOREAS_LOCATIONS_CSV)
        lidar_real = frame.timestamp.to_numpy() - shift
        assert np.isin(lidar_real, drive.lidar_t).all()
        image_real = np.array([ndx[int(t)][0] for t in frame.timestamp]) - shift
        assert np.isin(image_real, drive.camera_t).all()
        assert np.abs(image_real - lidar_real).max() < 100_000  # nearest camera frame (10 Hz)
        start = start_of(info["name"])  # consistent with the run name: within minutes of its start
        assert start <= frame.timestamp.iloc[0] < start + 600 * 1_000_000
    for name in ("boreas_training_queries_baseline.pickle", "boreas_evaluation_database.pickle",
                 "boreas_evaluation_query.pickle", "boreas_validation_evaluation_database.pickle",
                 "boreas_validation_evaluation_query.pickle"):
        load_pickle(boreas_dir / name)
    tuples = load_pickle(boreas_dir / "boreas_training_queries_baseline.pickle")
    assert len(tuples) > 0 and all(t.rel_scan_filepath.endswith(".npy") for t in tuples.values())
    assert sum(len(q) for q in load_pickle(boreas_dir / "boreas_evaluation_query.pickle")) > 0


def test_boreas_check_data(boreas_dir: Path) -> None:
    assert cli_main(["check-data", str(boreas_dir), "--layout", "boreas"]) == 0


def test_boreas_restart_gives_identical_bytes(boreas_dir: Path, boreas_poses: Path, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(boreas_dir, out)
    for path in [*sorted(out.rglob("*.npy"))[::11], *sorted(out.rglob("*.png"))[::13], out / COMPLETE_FILE,
                 out / "boreas_training_queries_baseline.pickle"]:
        path.unlink()
    report = generate_dataset(out, profile_config("smoke").synth, layout="boreas", workers=1, progress=False,
                              boreas_poses_dir=boreas_poses)
    assert report.clouds_written > 0 and report.images_written > 0
    assert _files(out) == _files(boreas_dir)


def test_boreas_query_sets_align_with_database_sets(boreas_dir: Path) -> None:
    """Boreas evaluation reuses database embeddings as queries: query entry k of run j is database entry k."""
    from distilvpr_lib.data.benchmark import Benchmark

    bench = Benchmark.load(boreas_dir)
    for split in ("test", "validation"):
        db_sets, q_sets = bench.database_sets(split), bench.query_sets(split)
        assert len(db_sets) == len(q_sets)
        n_with_neighbours = 0
        for db, q in zip(db_sets, q_sets):
            assert [q[k]["query"] for k in sorted(q)] == [db[k]["query"] for k in sorted(db)]
            n_with_neighbours += sum(any(len(v) for key, v in e.items() if isinstance(key, int)) for e in q.values())
        assert 0 < n_with_neighbours < sum(len(q) for q in q_sets), split  # only the squares' entries are queries
