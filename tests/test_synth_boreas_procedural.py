"""The generator's Boreas layout driven by procedural drives (no real poses needed; docs/DATA.md).

Mirrors tests/test_synth_boreas.py (the real-poses variant) and adds what the procedural source promises:
same seed -> identical bytes, another seed -> another world, drives that repeat one route with small
lateral and temporal differences, and a benchmark that the project's loaders read for training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distilvpr_lib.cli import main as cli_main
from distilvpr_lib.config import (
    NON_NEGATIVE_RADIUS_M,
    POSITIVE_RADIUS_M,
    TRUE_NEIGHBOUR_RADIUS_M,
    profile_config,
)
from distilvpr_lib.data.clouds import read_npy_cloud
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.pickles import load_pickle
from distilvpr_lib.data.splits import (
    BOREAS_CLOUD_FOLDER,
    BOREAS_IMAGE_FOLDER,
    BOREAS_LOCATIONS_CSV,
    BOREAS_P0_FOLDER,
    BOREAS_T_CAMERA_LIDAR_FOLDER,
)
from distilvpr_lib.data.synth import generate_dataset
from distilvpr_lib.data.synth.boreas import BoreasWriter, plan_boreas
from distilvpr_lib.data.synth.boreas_route import (
    CAMERA_PERIOD_US,
    LIDAR_JITTER_US,
    LIDAR_PERIOD_US,
    MAX_LATERAL_M,
    PROCEDURAL_POSES,
    ROUTE_CLEARANCE_M,
    START_EASTING_NORTHING,
    procedural_drives,
    procedural_route,
    route_clearance,
)
from distilvpr_lib.data.synth.boreas_world import DriveTrack
from distilvpr_lib.data.synth.skeleton import COMPLETE_FILE, CONFIG_FILE, config_record, json_bytes

BOREAS_NAME = re.compile(r"^boreas-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}$")
SMOKE = profile_config("smoke").synth


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# The route and the drives (no rendering)
# ---------------------------------------------------------------------------
def test_route_clearance_against_hand_computed_paths() -> None:
    step = 0.25
    line = np.stack([np.arange(0, 1000, step), np.zeros(4000)], axis=1)
    assert route_clearance(line, np.arange(4000) * step) == math.inf
    # a U: 600 m out, 100 m across, 600 m back: the two long legs are 100 m apart
    out = np.stack([np.arange(0, 600, step), np.zeros(2400)], axis=1)
    across = np.stack([np.full(400, 600.0), np.arange(0, 100, step)], axis=1)
    back = np.stack([np.arange(600, 0, -step), np.full(2400, 100.0)], axis=1)
    u = np.concatenate([out, across, back])
    assert route_clearance(u, np.arange(len(u)) * step) == pytest.approx(100.0, abs=0.3)


def test_same_seed_same_drives_other_seed_other_route() -> None:
    a, b = procedural_drives(0, 3, 300.0), procedural_drives(0, 3, 300.0)
    for x, y in zip(a, b):
        assert x.name == y.name
        for field in ("lidar_t", "lidar_en", "camera_t", "camera_en"):
            assert np.array_equal(getattr(x, field), getattr(y, field)), field
    c = procedural_drives(1, 3, 300.0)
    assert not np.allclose(a[0].lidar_en[-1], c[0].lidar_en[-1], atol=10.0)  # the route goes elsewhere


def test_drives_repeat_one_route_with_small_differences() -> None:
    length = 600.0
    drives = procedural_drives(3, 4, length)
    assert [d.name for d in drives] == [f"procedural-{k:02d}" for k in range(4)]
    origin = np.round(drives[0].lidar_en[0] / 100.0) * 100.0
    assert np.allclose(origin, START_EASTING_NORTHING)
    tracks = [DriveTrack.create(d, origin) for d in drives]
    from scipy.spatial import cKDTree

    tree = cKDTree(tracks[0].xy_grid)
    durations = []
    for drive, track in zip(drives, tracks):
        assert track.pose_s[-1] > length + 80.0  # the road world is built 80 m beyond the used route
        dt = np.diff(drive.lidar_t)
        assert np.abs(dt - LIDAR_PERIOD_US).max() <= 2 * LIDAR_JITTER_US and dt.std() > 0
        assert np.all(np.diff(drive.camera_t) == CAMERA_PERIOD_US)
        speed = np.linalg.norm(np.diff(drive.lidar_en, axis=0), axis=1) / dt * 1e6
        assert speed.max() < 13.0 and np.median(speed) > 4.0  # suburban speeds, m/s
        assert np.all(speed[:40] < 0.01)  # a standing start (≥ 5 s)
        assert drive.camera_en.shape == (len(drive.camera_t), 2)
        used = track.xy_grid[track.s_grid <= length]
        deviation, _ = tree.query(used)
        assert deviation.max() <= MAX_LATERAL_M + 0.1  # on the lane of drive 0
        durations.append(drive.lidar_t[-1] - drive.lidar_t[0])
        if drive is not drives[0]:
            assert deviation.mean() > 0.05  # but not on its exact path
    assert len(set(durations)) == len(durations)  # each drive has its own timing


def test_study_length_route_keeps_its_clearance() -> None:
    xy, heading, corners = procedural_route(0, 8000.0)
    s = np.arange(len(xy)) * 0.25
    assert s[-1] >= 8000.0 and len(corners) >= 10
    assert route_clearance(xy, s) >= ROUTE_CLEARANCE_M
    turn = np.abs(np.diff(np.unwrap(heading))) / 0.25
    assert turn.max() <= 1 / 15.0 + 1e-3  # no corner tighter than a 15 m radius


def test_plan_other_seed_other_world_and_one_drive_per_run() -> None:
    a, b = plan_boreas(SMOKE, PROCEDURAL_POSES, seed=0), plan_boreas(SMOKE, None, seed=5)
    assert a.world.summary["trajectories"] == "procedural" and a.world.summary["source_drive"] == "procedural-00"
    assert sorted(r.drive_index for r in a.runs) == list(range(SMOKE.n_runs))  # every run its own drive
    assert all(not r.jitter.any() for r in a.runs)  # the variation comes from the drives themselves
    first_a = [(sp.northing, sp.easting) for sp in a.runs[0].submaps]
    first_b = [(sp.northing, sp.easting) for sp in b.runs[0].submaps]
    assert first_a != first_b and a.world.summary != b.world.summary


# ---------------------------------------------------------------------------
# Options and records
# ---------------------------------------------------------------------------
def test_boreas_poses_option_errors_write_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli_main(["synth", "--profile", "smoke", "--boreas-poses", "procedural", "--out", str(out),
                     "--no-progress"]) == 2  # an Oxford-layout run given Boreas drives
    assert cli_main(["synth", "--profile", "smoke", "--layout", "boreas", "--boreas-poses", str(tmp_path / "none"),
                     "--out", str(out), "--no-progress"]) == 2
    assert not out.exists()


def test_procedural_and_real_records_differ_and_refuse_each_other(tmp_path: Path) -> None:
    poses = tmp_path / "poses"
    (poses / "run" / "applanix").mkdir(parents=True)
    (poses / "run" / "applanix" / "lidar_poses.csv").write_text("GPSTime,easting,northing\n")
    assert BoreasWriter(poses).record_extra() == {}  # the real-poses record is the one before this option
    assert BoreasWriter().record_extra() == BoreasWriter(PROCEDURAL_POSES).record_extra() \
        == {"boreas_trajectories": "procedural"}
    out = tmp_path / "started_with_real_poses"
    out.mkdir()
    (out / CONFIG_FILE).write_bytes(json_bytes(config_record(SMOKE, SMOKE.seed, "boreas")))
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, SMOKE, layout="boreas", progress=False)
    assert sorted(p.name for p in out.iterdir()) == [CONFIG_FILE]


# ---------------------------------------------------------------------------
# A generated smoke world
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def boreas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_boreas_procedural") / "smoke"
    assert cli_main(["synth", "--profile", "smoke", "--layout", "boreas", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_same_seed_gives_identical_bytes_and_restarts(boreas_dir: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"  # generated a second time, by a pool of two workers
    report = generate_dataset(again, SMOKE, layout="boreas", boreas_poses_dir="procedural", workers=2, progress=False)
    assert report.clouds_written == report.clouds_total > 0
    assert _checksums(again) == _checksums(boreas_dir)
    # an interrupted generation is completed with the same bytes
    for path in [*sorted(again.rglob("*.npy"))[::11], *sorted(again.rglob("*.png"))[::13], again / COMPLETE_FILE,
                 again / "boreas_training_queries_baseline.pickle"]:
        path.unlink()
    report = generate_dataset(again, SMOKE, layout="boreas", workers=1, progress=False)
    assert 0 < report.clouds_written < report.clouds_total and report.images_written > 0
    assert _checksums(again) == _checksums(boreas_dir)


@pytest.mark.slow
def test_procedural_layout(boreas_dir: Path) -> None:
    runs = sorted(p.name for p in boreas_dir.iterdir() if p.is_dir())
    assert len(runs) == SMOKE.n_runs and all(BOREAS_NAME.match(r) for r in runs)
    assert json.loads((boreas_dir / CONFIG_FILE).read_text())["boreas_trajectories"] == "procedural"
    manifest = json.loads((boreas_dir / "synth_manifest.json").read_text())
    assert manifest["world"]["trajectories"] == "procedural"
    ndx = load_pickle(boreas_dir / "boreas_lidar2image_ndx.pickle")
    drives = {d.name: d for d in procedural_drives(SMOKE.seed, SMOKE.n_runs, SMOKE.route_length_m)}
    for info in manifest["runs"]:
        run = info["name"]
        frame = read_locations_csv(boreas_dir / run / BOREAS_LOCATIONS_CSV)
        assert len(frame) >= 10
        step = np.median(np.hypot(np.diff(frame.northing), np.diff(frame.easting)))
        assert 8.0 < step < 12.0
        assert np.all(np.abs(frame.easting - START_EASTING_NORTHING[0]) < SMOKE.route_length_m + 200)
        assert np.all(np.abs(frame.northing - START_EASTING_NORTHING[1]) < SMOKE.route_length_m + 200)
        for ts in frame.timestamp.tolist()[::5]:
            cloud = read_npy_cloud(boreas_dir / run / BOREAS_CLOUD_FOLDER / f"{ts}.npy")
            assert cloud.dtype == np.float32 and cloud.shape == (4096, 3)
            assert 10.0 < np.abs(cloud[:, :2]).max() <= 50.0 + 1e-3  # metric, LiDAR frame
            assert (boreas_dir / run / BOREAS_P0_FOLDER / f"{ts}.txt").is_file()
            T = np.loadtxt(boreas_dir / run / BOREAS_T_CAMERA_LIDAR_FOLDER / f"{ts}.txt")
            assert T.shape == (4, 4) and np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
            with Image.open(boreas_dir / run / BOREAS_IMAGE_FOLDER / f"{ndx[ts][0]}.png") as im:
                assert im.size == (SMOKE.image_width, SMOKE.image_height)
        # every timestamp is one of its procedural drive's, shifted to the run's date
        drive = drives[info["source_drive"]]
        lidar = frame.timestamp.to_numpy() - info["time_shift_us"]
        assert np.isin(lidar, drive.lidar_t).all()
        image = np.array([ndx[int(t)][0] for t in frame.timestamp]) - info["time_shift_us"]
        assert np.isin(image, drive.camera_t).all() and np.abs(image - lidar).max() <= CAMERA_PERIOD_US // 2
    assert len({info["source_drive"] for info in manifest["runs"]}) == SMOKE.n_runs


@pytest.mark.slow
def test_procedural_check_data(boreas_dir: Path) -> None:
    assert cli_main(["check-data", str(boreas_dir), "--layout", "boreas"]) == 0


def _positions(dataset_dir: Path) -> dict[str, np.ndarray]:
    """``rel_path -> [northing, easting]`` from every run's location CSV."""
    found = {}
    for csv in sorted(dataset_dir.glob(f"*/{BOREAS_LOCATIONS_CSV}")):
        frame = read_locations_csv(csv)
        for ts, n, e in zip(frame.timestamp, frame.northing, frame.easting):
            found[f"{csv.parent.name}/{BOREAS_CLOUD_FOLDER}/{int(ts)}.npy"] = np.array([n, e])
    return found


@pytest.mark.slow
def test_procedural_benchmark_reads_for_training_and_evaluation(boreas_dir: Path) -> None:
    import torch

    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset
    from distilvpr_lib.data.sampler import PositivePairBatchSampler

    bench = Benchmark.load(boreas_dir, layout="boreas")
    assert bench.layout == "boreas" and bench.has_images
    where = _positions(boreas_dir)
    tuples = bench.training_tuples
    with_positives = [t for t in tuples.values() if len(t.positives)]
    assert len(with_positives) >= 8
    for t in tuples.values():  # the study's radii (config.POSITIVE_RADIUS_M, NON_NEGATIVE_RADIUS_M)
        here = where[t.rel_scan_filepath]
        assert np.allclose(here, t.position)
        for p in t.positives:
            assert np.linalg.norm(tuples[int(p)].position - here) <= POSITIVE_RADIUS_M + 1e-6
        assert set(t.positives.tolist()) <= set(t.non_negatives.tolist())
        for q in t.non_negatives:
            assert np.linalg.norm(tuples[int(q)].position - here) <= NON_NEGATIVE_RADIUS_M + 1e-6
    for split in ("test", "validation"):
        db_sets, q_sets = bench.database_sets(split), bench.query_sets(split)
        with_neighbours = 0
        for j, q in enumerate(q_sets):
            for entry in q.values():
                here = where[entry["query"]]
                for i, neighbours in ((k, v) for k, v in entry.items() if isinstance(k, int)):
                    assert i != j or not neighbours
                    for n in neighbours:
                        assert np.linalg.norm(where[db_sets[i][n]["query"]] - here) <= TRUE_NEIGHBOUR_RADIUS_M + 1e-6
                    with_neighbours += bool(neighbours)
        assert with_neighbours > 0, split
    # one training batch through the project's sampler, dataset and collate (Boreas voxels: 1 m, docs/METHOD.md §2.2)
    cfg = profile_config("smoke").data
    sampler = PositivePairBatchSampler(tuples, batch_size=8, seed=0)
    batch_ids = next(iter(sampler))
    dataset = TrainingDataset(bench, cfg, augment=True)
    batch = make_collate_fn(tuples, 1.0)([dataset[i] for i in batch_ids])
    assert batch["images"].shape == (len(batch_ids), 3, SMOKE.image_height, SMOKE.image_width)
    assert batch["clouds"].shape == (len(batch_ids), 4096, 3) and not batch["skip"]
    assert bool(batch["positives_mask"][0, 1])  # elements 0 and 1 are a positive pair
