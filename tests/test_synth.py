"""Tests of the procedural multi-modal generator (distilvpr_lib.data.synth) on the smoke profile."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distilvpr_lib.cli import main as cli_main
from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, OXFORD_TEST_SQUARE_HALF_WIDTH_M, profile_config
from distilvpr_lib.data.clouds import read_bin
from distilvpr_lib.data.locations import read_locations_csv
from distilvpr_lib.data.pickles import load_pickle
from distilvpr_lib.data.synth import (
    SynthRenderer,
    build_world,
    cloud_statistics,
    generate_dataset,
    plan_dataset,
    premise_table,
    realism_table,
    sample_conditions,
)
from distilvpr_lib.data.synth.conditions import start_time_us
from distilvpr_lib.data.synth.skeleton import COMPLETE_FILE, CONFIG_FILE, MANIFEST_FILE, encode_png
from distilvpr_lib.data.synth.lidar import normalise_submap
from distilvpr_lib.data.synth.raycast import (
    HIT_BOX,
    HIT_CYLINDER,
    HIT_GROUND,
    HIT_NONE,
    HIT_SPHEROID,
    Tiles,
    cast_rays,
    hash_uniform,
    select_primitives,
)
from distilvpr_lib.data.synth.stats import roc_auc
from distilvpr_lib.data.synth.world import PrimitiveBuilder

RUN_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}$")
PICKLES = (
    "training_queries_baseline.pickle",
    "oxford_evaluation_database.pickle",
    "oxford_evaluation_query.pickle",
    "validation_evaluation_database.pickle",
    "validation_evaluation_query.pickle",
)


def _smoke_cfg():
    return profile_config("smoke").synth


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke dataset generated once through the CLI."""
    out = tmp_path_factory.mktemp("synth") / "smoke"
    assert cli_main(["synth", "--profile", "smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------
def test_layout_is_exactly_the_oxford_benchmark(smoke_dir: Path) -> None:
    cfg = _smoke_cfg()
    runs = sorted(p.name for p in (smoke_dir / "oxford").iterdir())
    assert len(runs) == cfg.n_runs
    manifest = json.loads((smoke_dir / MANIFEST_FILE).read_text())
    assert sorted(r["name"] for r in manifest["runs"]) == runs
    assert (smoke_dir / COMPLETE_FILE).is_file() and (smoke_dir / CONFIG_FILE).is_file()
    ndx = load_pickle(smoke_dir / "images" / "lidar2image_ndx.pickle")
    assert isinstance(ndx, dict)
    all_lidar_ts = set()
    for run in runs:
        assert RUN_NAME.match(run), run
        start = start_time_us(run)
        for folder, csv in (("pointcloud_20m_10overlap", "pointcloud_locations_20m_10overlap.csv"),
                            ("pointcloud_20m", "pointcloud_locations_20m.csv")):
            header = (smoke_dir / "oxford" / run / csv).read_text().splitlines()[0]
            assert header == "timestamp,northing,easting"
            frame = read_locations_csv(smoke_dir / "oxford" / run / csv)
            assert len(frame) >= 5
            ts = frame["timestamp"].to_numpy()
            assert np.all(np.diff(ts) > 0)
            assert all(len(str(t)) == 16 for t in ts)
            # timestamps consistent with the run name: after its start, within the drive
            assert ts.min() >= start and ts.max() < start + 3600 * 1_000_000
            north, east = frame["northing"].to_numpy(), frame["easting"].to_numpy()
            assert np.all((north > 5_733_000) & (north < 5_738_000) & (east > 618_000) & (east < 622_500))
            # consecutive submaps: ~10 m (training) or ~20 m (evaluation) apart
            step = np.median(np.hypot(np.diff(north), np.diff(east)))
            expected = 10.0 if folder.endswith("overlap") else 20.0
            assert abs(step - expected) < 2.5, (folder, step)
            files = sorted((smoke_dir / "oxford" / run / folder).iterdir())
            assert [f.name for f in files] == sorted(f"{t}.bin" for t in ts)
            for f in files[:: max(1, len(files) // 6)]:
                assert f.stat().st_size == 4096 * 3 * 8
                cloud = np.fromfile(f, dtype="<f8").reshape(4096, 3)
                assert np.array_equal(read_bin(f), cloud)
                assert np.isfinite(cloud).all() and np.abs(cloud).max() <= 1.0
                assert abs(np.linalg.norm(cloud - cloud.mean(axis=0), axis=1).mean() - 0.5) < 0.05
                assert len(np.unique(cloud, axis=0)) > 1000
            for t in ts:
                all_lidar_ts.add(int(t))
                images = ndx[int(t)]
                assert len(images) == cfg.images_per_submap
                for image_ts in images:
                    assert abs(image_ts - t) < 200_000  # nearest camera frames (16 Hz)
                    path = smoke_dir / "images" / run / f"{image_ts}.png"
                    assert path.is_file()
        sample = next((smoke_dir / "images" / run).iterdir())
        with Image.open(sample) as im:
            assert im.mode == "RGB" and im.size == (cfg.image_width, cfg.image_height)
    assert set(ndx) == all_lidar_ts
    for name in PICKLES:
        assert (smoke_dir / name).is_file()
        load_pickle(smoke_dir / name)
    tuples = load_pickle(smoke_dir / "training_queries_baseline.pickle")
    assert len(tuples) > 0 and sorted(tuples) == list(range(len(tuples)))
    assert any(len(t.positives) for t in tuples.values())
    for t in tuples.values():  # training tuples lie outside the test squares
        n, e = t.position
        assert not any(abs(n - cn) < OXFORD_TEST_SQUARE_HALF_WIDTH_M and abs(e - ce) < OXFORD_TEST_SQUARE_HALF_WIDTH_M
                       for cn, ce in OXFORD_TEST_SQUARE_CENTRES)
    queries = load_pickle(smoke_dir / "oxford_evaluation_query.pickle")
    assert len(queries) == cfg.n_runs and all(len(q) > 0 for q in queries)
    assert sum(len(q) for q in load_pickle(smoke_dir / "validation_evaluation_query.pickle")) > 0


def test_check_data_accepts_the_generated_dataset(smoke_dir: Path) -> None:
    assert cli_main(["check-data", str(smoke_dir)]) == 0


# ---------------------------------------------------------------------------
# Determinism and restart
# ---------------------------------------------------------------------------
def test_interrupted_generation_resumes_to_identical_bytes(smoke_dir: Path, tmp_path: Path) -> None:
    """A second generation (same seed), interrupted and then resumed, equals the first byte for byte."""
    out = tmp_path / "again"
    cfg = _smoke_cfg()

    class Stop(Exception):
        pass

    def interrupt(done: int, total: int) -> None:
        if done >= total // 3:
            raise Stop

    with pytest.raises(Stop):
        generate_dataset(out, cfg, workers=1, progress=interrupt)
    assert not (out / COMPLETE_FILE).exists()
    assert not list(out.rglob("*.tmp*")), "no temporary files are left behind"
    partial = len(list(out.rglob("*.bin"))) + len(list(out.rglob("*.png")))
    report = generate_dataset(out, cfg, workers=1, progress=False)
    assert (out / COMPLETE_FILE).is_file()
    assert 0 < report.clouds_written + report.images_written < report.clouds_total + report.images_total
    assert partial + report.clouds_written + report.images_written == report.clouds_total + report.images_total
    assert _all_files(out) == _all_files(smoke_dir)


def test_restart_rebuilds_deleted_files(smoke_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "copy"
    shutil.copytree(smoke_dir, out)
    reference = _all_files(smoke_dir)
    removed = [*sorted(out.rglob("*.bin"))[::17], *sorted(out.rglob("*.png"))[::23],
               out / COMPLETE_FILE, out / "training_queries_baseline.pickle", out / "images" / "lidar2image_ndx.pickle",
               next(out.rglob("pointcloud_locations_20m.csv"))]
    for path in removed:
        path.unlink()
    report = generate_dataset(out, _smoke_cfg(), workers=1, progress=False)
    assert report.clouds_written == len([p for p in removed if p.suffix == ".bin"])
    assert report.images_written == len([p for p in removed if p.suffix == ".png"])
    assert _all_files(out) == reference
    # complete: nothing to do
    again = generate_dataset(out, _smoke_cfg(), workers=1, progress=False)
    assert again.already_complete and again.clouds_written == 0


def test_refuses_to_mix_settings(smoke_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    shutil.copytree(smoke_dir, out)
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, _smoke_cfg(), seed=1, workers=1, progress=False)
    cfg = dataclasses.replace(_smoke_cfg(), image_width=80, image_height=60)
    with pytest.raises(ValueError, match="other settings"):
        generate_dataset(out, cfg, workers=1, progress=False)


def test_rendering_is_deterministic_and_seed_dependent() -> None:
    cfg = _smoke_cfg()
    a, b = SynthRenderer(cfg), SynthRenderer(cfg)
    run = a.plan.runs[1]
    sp = run.submaps[3]
    img_a = a.image(run.index, sp.image_timestamps[0], sp.image_s[0])
    assert encode_png(img_a) == encode_png(b.image(run.index, sp.image_timestamps[0], sp.image_s[0]))
    cloud_a = a.submap(run.index, sp.timestamp, sp.centre_s, sp.scan_s)
    assert cloud_a.tobytes() == b.submap(run.index, sp.timestamp, sp.centre_s, sp.scan_s).tobytes()
    other = plan_dataset(cfg, seed=1)
    assert [r.name for r in other.runs] != [r.name for r in a.plan.runs]
    assert other.world.summary != a.plan.world.summary


# ---------------------------------------------------------------------------
# Conditions: images change much more than clouds
# ---------------------------------------------------------------------------
def test_conditions_change_images_much_more_than_clouds(smoke_dir: Path) -> None:
    manifest = json.loads((smoke_dir / MANIFEST_FILE).read_text())
    archetypes = {r["name"]: r["archetype"] for r in manifest["runs"]}
    assert len(set(archetypes.values())) == len(archetypes), "every smoke run has its own condition"
    ndx = load_pickle(smoke_dir / "images" / "lidar2image_ndx.pickle")
    runs = sorted(archetypes)
    frames = {r: read_locations_csv(smoke_dir / "oxford" / r / "pointcloud_locations_20m_10overlap.csv") for r in runs}
    ref = runs[0]
    image_diffs = []
    for other in runs[1:]:
        pos_o = frames[other][["northing", "easting"]].to_numpy()
        for k in range(0, len(frames[ref]), 5):
            row = frames[ref].iloc[k]
            d = np.hypot(pos_o[:, 0] - row.northing, pos_o[:, 1] - row.easting)
            j = int(np.argmin(d))
            assert d[j] < 6.0  # every place is seen again by every run
            img_ref = np.asarray(Image.open(smoke_dir / "images" / ref / f"{ndx[int(row.timestamp)][0]}.png"), float)
            ts_o = int(frames[other].timestamp.iloc[j])
            img_o = np.asarray(Image.open(smoke_dir / "images" / other / f"{ndx[ts_o][0]}.png"), float)
            image_diffs.append(np.abs(img_ref - img_o).mean())
    assert np.mean(image_diffs) > 15.0, "different conditions give clearly different images of the same place"
    full = premise_table(smoke_dir)
    assert len(full) == len(runs) and full["archetype"].iloc[0] == "same run (control)"
    assert (full["pairs_same"] > 0).all()
    table = full.iloc[1:]  # across runs, under different conditions
    assert (table["cloud_auc"] > 0.85).all(), table
    assert table["image_auc"].mean() < table["cloud_auc"].mean() - 0.15, table
    assert (table["cloud_same_mean"] < table["cloud_different_mean"]).all()
    # within one condition the images do tell places apart: the condition change is what hurts
    assert full["image_auc"].iloc[0] > table["image_auc"].mean(), full


def test_sampled_conditions_cover_day_night_and_weather() -> None:
    conditions = sample_conditions(0, 8)
    assert {c.archetype for c in conditions} == {"sunny", "overcast", "night", "dusk", "rain", "fog", "snow", "dawn"}
    assert [c.name for c in conditions] == sorted(c.name for c in conditions)
    assert len({c.name for c in conditions}) == 8
    night = next(c for c in conditions if c.archetype == "night")
    hour = int(night.name[11:13])
    assert hour >= 17, night.name


# ---------------------------------------------------------------------------
# Realism statistics
# ---------------------------------------------------------------------------
@pytest.mark.real_data
def test_realism_statistics_on_the_real_fixture(oxford_real_dir: Path, smoke_dir: Path) -> None:
    from distilvpr_lib.data.synth.stats import load_clouds

    real = cloud_statistics(load_clouds(oxford_real_dir)).median()
    assert 3500 < real["unique_voxels_0.01"] < 4096
    assert 0.009 < real["mean_nn_distance"] < 0.013
    assert -0.25 < real["z_p05"] < -0.17 and 0.14 < real["z_p95"] < 0.21
    assert 0.7 < real["abs_max_x"] < 0.9
    table = realism_table(smoke_dir, oxford_real_dir)
    assert list(table.index) == ["unique_voxels_0.01", "mean_nn_distance", "z_p05", "z_p95", "abs_max_x", "abs_max_y",
                                 "abs_max_z"]
    assert {"generated", "real", "relative_error", "within_tolerance"} <= set(table.columns)
    assert table.loc["z_p05", "generated"] < 0 < table.loc["z_p95", "generated"]


def test_cloud_statistics_of_known_clouds() -> None:
    grid = np.stack(np.meshgrid(np.arange(16), np.arange(16), np.arange(16), indexing="ij"), -1).reshape(-1, 3) * 0.02
    stats = cloud_statistics([grid - grid.mean(axis=0)])
    assert stats.loc[0, "unique_voxels_0.01"] == 4096
    assert stats.loc[0, "mean_nn_distance"] == pytest.approx(0.02)
    assert stats.loc[0, "abs_max_x"] == pytest.approx(0.15)
    assert roc_auc([3, 4], [1, 2]) == 1.0 and roc_auc([1, 2], [3, 4]) == 0.0 and roc_auc([1], [1]) == 0.5


# ---------------------------------------------------------------------------
# Geometry units
# ---------------------------------------------------------------------------
def test_ray_caster_hits_each_primitive_kind_at_the_right_distance() -> None:
    b = PrimitiveBuilder()
    b.box((10, -1, 0), (12, 1, 3), "building", (0.5, 0.5, 0.5))
    b.cylinder((0, 10), 0.5, 0.0, 4.0, "pole", (0.2, 0.2, 0.2))
    b.spheroid((-8, 0, 2), 1.0, 2.0, "crown", (0.1, 0.4, 0.1), porosity=0.0)
    prims = b.build()
    origin = np.array([0.0, 0.0, 2.0])
    directions = np.array([[[1, 0, 0]], [[0, 1, 0]], [[-1, 0, 0]], [[0, -1, 0]], [[0, 0, -1]], [[0, 0, 1]]],
                          dtype=np.float32)
    local = select_primitives(prims, origin, 100.0)
    hits = cast_rays(local, Tiles.from_directions(directions), np.arange(6).reshape(6, 1), 0, 100.0)
    assert hits.kind[:, 0].tolist() == [HIT_BOX, HIT_CYLINDER, HIT_SPHEROID, HIT_NONE, HIT_GROUND, HIT_NONE]
    np.testing.assert_allclose(hits.t[:3, 0], [10.0, 9.5, 7.0], atol=1e-4)
    assert hits.t[4, 0] == pytest.approx(2.0)
    # a fully porous crown lets every ray through
    b2 = PrimitiveBuilder()
    b2.spheroid((-8, 0, 2), 1.0, 2.0, "crown", (0.1, 0.4, 0.1), porosity=1.0)
    local2 = select_primitives(b2.build(), origin, 100.0)
    assert cast_rays(local2, Tiles.from_directions(directions[2:3]), np.zeros((1, 1)), 0, 100.0).kind[0, 0] == HIT_NONE


def test_world_route_is_a_closed_loop_through_test_squares_and_training_region() -> None:
    world = build_world(3, 900.0)
    route = world.route
    assert np.linalg.norm(route.points[0] - route.points[-1]) < 1e-9
    assert 600 < route.length < 1300
    steps = np.linalg.norm(np.diff(route.points, axis=0), axis=1)
    assert steps.max() < 1.0  # dense, no jumps
    north, east = world.local_to_utm(route.points)
    inside = np.zeros(len(north), bool)
    for cn, ce in OXFORD_TEST_SQUARE_CENTRES:
        inside |= (np.abs(north - cn) < OXFORD_TEST_SQUARE_HALF_WIDTH_M) & (np.abs(east - ce) < OXFORD_TEST_SQUARE_HALF_WIDTH_M)
    assert 0.2 < inside.mean() < 0.5
    assert world.summary["buildings"] > 50 and world.prims.counts["spheroids"] > 20
    again = build_world(3, 900.0)
    assert np.array_equal(again.prims.box_lo, world.prims.box_lo) and np.array_equal(again.route.points, route.points)


def test_normalisation_like_pointnetvlad() -> None:
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(4096, 3)) * [10.0, 6.0, 3.0] + [5.0, -2.0, 4.0]
    out = normalise_submap(pts)
    assert out.dtype == np.float64 and out.shape == (4096, 3)
    assert np.abs(out).max() <= 1.0
    centred = pts - pts.mean(axis=0)
    expected = -np.clip(centred * 0.5 / np.linalg.norm(centred, axis=1).mean(), -1, 1)
    np.testing.assert_allclose(out, expected)


def test_hash_uniform_is_deterministic_and_uniform() -> None:
    a = hash_uniform(np.arange(100_000), 7)
    assert np.array_equal(a, hash_uniform(np.arange(100_000), 7))
    assert 0.0 <= a.min() and a.max() < 1.0 and abs(a.mean() - 0.5) < 0.01
    assert not np.array_equal(a, hash_uniform(np.arange(100_000), 8))


def test_png_encoding_is_deterministic() -> None:
    image = (np.random.default_rng(0).random((12, 16, 3)) * 255).astype(np.uint8)
    data = encode_png(image)
    assert data == encode_png(image)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image)


def test_turned_boxes_are_hit_in_their_own_frame() -> None:
    b = PrimitiveBuilder()
    # a 2 x 2 x 4 m box centred at (10, 0), turned by 45 degrees: its corner points at the origin
    b.box((9, -1, 0), (11, 1, 4), "building", (0.5, 0.5, 0.5), yaw=np.pi / 4)
    prims = b.build()
    local = select_primitives(prims, np.array([0.0, 0.0, 2.0]), 100.0)
    directions = np.array([[[1, 0, 0]], [[np.cos(0.1), np.sin(0.1), 0]]], dtype=np.float32)
    hits = cast_rays(local, Tiles.from_directions(directions), np.zeros((2, 1)), 0, 100.0)
    assert hits.kind[0, 0] == HIT_BOX
    assert hits.t[0, 0] == pytest.approx(10.0 - np.sqrt(2.0), abs=1e-4)
    assert hits.kind[1, 0] == HIT_BOX and hits.t[1, 0] > hits.t[0, 0]
