"""Boreas layout: the generator driven along real Boreas trajectories (METHOD.md §4.2).

The world is built around the first real drive of ``boreas_poses/`` (a suburban arterial road
along the driven path: detached houses and low commercial blocks turned to face the road, front
yards, boulevard trees, lamps), and every run follows one of the real drives (with its real LiDAR
and camera timestamps, shifted to the run's date) under its own condition. Written layout::

    <run>/lidar_1_4096_interval10/<ts>.npy            (4096, 3) float32, metric, LiDAR frame, ground removed
    <run>/camera_lidar_interval10/<image_ts>.png       forward camera
    <run>/P0_camera_interval10/<ts>.txt                3x4 camera projection matrix
    <run>/T_camera_lidar_basedon_pose_interval10/<ts>.txt   4x4 LiDAR-to-camera transform
    <run>/lidar_locations_interval10.csv               timestamp,northing,easting (UTM zone 17)
    boreas_training_queries_baseline.pickle, boreas_evaluation_{database,query}.pickle,
    boreas_validation_evaluation_{database,query}.pickle, boreas_lidar2image_ndx.pickle,
    boreas_squares.json, synth_config.json, synth_manifest.json, synth_complete.json

Run names are ``boreas-YYYY-MM-DD-HH-MM`` (23 characters). The Boreas benchmark's own split is
not published (METHOD.md §4.2); here test squares of half-width 150 m are placed along the route
so that about ``test_fraction`` of the submaps are queries, with the Oxford radii (10/50/25 m)
and a validation square chosen as in :mod:`distilvpr_lib.data.splits`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distilvpr_lib.config import (
    NON_NEGATIVE_RADIUS_M,
    OXFORD_TEST_SQUARE_HALF_WIDTH_M,
    DataConfig,
    SynthConfig,
)
from distilvpr_lib.data.formats import PathLike, atomic_write, save_pickle, write_locations_csv, write_npy_cloud
from distilvpr_lib.data.splits import (
    RunLocations,
    choose_validation_squares,
    distance_to_squares,
    in_squares,
    make_evaluation_sets,
    make_training_tuples,
)
from distilvpr_lib.data.synth.camera import CAMERA_HEIGHT_M, CAMERA_PITCH_DEG, CameraModel, render_image
from distilvpr_lib.data.synth.conditions import RunCondition, sample_conditions, start_time_us
from distilvpr_lib.data.synth.lidar import LIDAR_HEIGHT_M, GROUND_REMOVAL_Z_M, sample_to_count, scan, voxel_downsample
from distilvpr_lib.data.synth.world import (
    CAR_PALETTE,
    CLOTHES_PALETTE,
    FACADE_PALETTE,
    PolylineRoad,
    PrimitiveBuilder,
    Primitives,
    Route,
    World,
    _tree,
    _u32,
    apply_season,
    srgb_to_linear,
)

BOREAS_CLOUD_FOLDER = "lidar_1_4096_interval10"
BOREAS_IMAGE_FOLDER = "camera_lidar_interval10"
P0_FOLDER = "P0_camera_interval10"
T_CAMERA_LIDAR_FOLDER = "T_camera_lidar_basedon_pose_interval10"
LOCATIONS_CSV = "lidar_locations_interval10.csv"
TRAINING_PICKLE = "boreas_training_queries_baseline.pickle"
TEST_DATABASE_PICKLE = "boreas_evaluation_database.pickle"
TEST_QUERY_PICKLE = "boreas_evaluation_query.pickle"
VALIDATION_DATABASE_PICKLE = "boreas_validation_evaluation_database.pickle"
VALIDATION_QUERY_PICKLE = "boreas_validation_evaluation_query.pickle"
LIDAR2IMAGE_PICKLE = "boreas_lidar2image_ndx.pickle"
SQUARES_JSON = "boreas_squares.json"
#: Submap spacing along each drive (m) and horizontal range of a submap (m).
SUBMAP_SPACING_M = 10.0
CLOUD_RANGE_M = 50.0
CLOUD_VOXEL_M = 0.2
#: Carriageway half-width and sidewalk width of the generated road (m); the vehicle drives one
#: lane right of the centre line (right-hand traffic).
ROAD_HALF_WIDTH_M = 7.5
SIDEWALK_M = 1.8
LANE_OFFSET_M = 1.8
#: Extra road built beyond the used part of the route (m).
_ROAD_MARGIN_M = 80.0
_TAG_BOREAS_WORLD, _TAG_BOREAS_TRANSIENTS, _TAG_BOREAS_SCAN, _TAG_BOREAS_SAMPLE, _TAG_BOREAS_FRAME = 700, 701, 702, 703, 704
_TAG_BOREAS_JITTER = 705


def default_boreas_poses_dir() -> Path:
    """``$DISTILVPR_REAL_DATA/boreas_poses``, else ``../shared/data/real/boreas_poses`` beside the repository."""
    env = os.environ.get("DISTILVPR_REAL_DATA")
    base = Path(env) if env else Path(__file__).resolve().parents[4] / "shared" / "data" / "real"
    return base / "boreas_poses"


@dataclass
class RealDrive:
    """One real Boreas drive: LiDAR and camera timestamps (µs) with UTM positions (easting, northing)."""

    name: str
    lidar_t: np.ndarray
    lidar_en: np.ndarray
    camera_t: np.ndarray
    camera_en: np.ndarray


def load_real_drives(poses_dir: PathLike) -> list[RealDrive]:
    """Read ``<run>/applanix/{lidar,camera}_poses.csv`` of every run under ``poses_dir`` (sorted).

    Raises:
        FileNotFoundError: the folder or its pose files are missing.
    """
    import pandas as pd

    root = Path(poses_dir)
    runs = sorted(p for p in root.glob("*/applanix/lidar_poses.csv")) if root.is_dir() else []
    if not runs:
        raise FileNotFoundError(f"{root}: no <run>/applanix/lidar_poses.csv (Boreas poses; set DISTILVPR_REAL_DATA "
                                "or pass the folder)")
    drives = []
    for lidar_csv in runs:
        run_dir = lidar_csv.parents[1]
        lidar = pd.read_csv(lidar_csv)
        camera = pd.read_csv(run_dir / "applanix" / "camera_poses.csv")
        for frame, path in ((lidar, lidar_csv), (camera, run_dir / "applanix" / "camera_poses.csv")):
            missing = [c for c in ("GPSTime", "easting", "northing") if c not in frame.columns]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}")
        drives.append(RealDrive(run_dir.name, lidar["GPSTime"].to_numpy(np.int64),
                                lidar[["easting", "northing"]].to_numpy(np.float64),
                                camera["GPSTime"].to_numpy(np.int64), camera[["easting", "northing"]].to_numpy(np.float64)))
    return drives


@dataclass
class DriveTrack:
    """A drive as a smooth path: arc length of every LiDAR pose and a dense smoothed polyline."""

    drive: RealDrive
    origin: np.ndarray  # (2,) UTM easting, northing of the local origin
    pose_s: np.ndarray  # (N,) arc length of each LiDAR pose
    s_grid: np.ndarray  # dense arc lengths
    xy_grid: np.ndarray  # (M, 2) smoothed local positions
    heading_grid: np.ndarray  # (M,)

    @classmethod
    def create(cls, drive: RealDrive, origin: np.ndarray, step: float = 0.25, smooth_m: float = 2.0) -> "DriveTrack":
        xy = drive.lidar_en - origin
        seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
        pose_s = np.concatenate([[0.0], np.cumsum(seg)])
        s_grid = np.arange(0.0, pose_s[-1], step)
        keep = np.concatenate([[True], np.diff(pose_s) > 1e-6])
        raw = np.stack([np.interp(s_grid, pose_s[keep], xy[keep, a]) for a in range(2)], axis=1)
        k = max(int(smooth_m / step), 1)
        kernel = np.ones(2 * k + 1) / (2 * k + 1)
        padded = np.pad(raw, ((k, k), (0, 0)), mode="edge")
        smooth = np.stack([np.convolve(padded[:, a], kernel, mode="valid") for a in range(2)], axis=1)
        tangent = np.gradient(smooth, axis=0)
        heading = np.unwrap(np.arctan2(tangent[:, 1], tangent[:, 0]))
        return cls(drive, origin, pose_s, s_grid, smooth, heading)

    def arc_at_time(self, t_us: Any) -> np.ndarray:
        """Arc length at real time(s) (µs)."""
        return np.interp(np.asarray(t_us, dtype=np.float64), self.drive.lidar_t.astype(np.float64), self.pose_s)

    def pose(self, s: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Local xy (..., 2), heading (...,) and left normal (..., 2) at arc length(s) ``s``."""
        s = np.asarray(s, dtype=np.float64)
        xy = np.stack([np.interp(s, self.s_grid, self.xy_grid[:, a]) for a in range(2)], axis=-1)
        heading = np.interp(s, self.s_grid, self.heading_grid)
        return xy, heading, np.stack([-np.sin(heading), np.cos(heading)], axis=-1)


def _boreas_name(cond: RunCondition, used: set[str]) -> str:
    """``boreas-YYYY-MM-DD-HH-MM`` from a condition's date (2014/2015 mapped to 2020/2021)."""
    when = dt.datetime.strptime(cond.name, "%Y-%m-%d-%H-%M-%S")
    when = when.replace(year=when.year + 6)
    name = "boreas-" + when.strftime("%Y-%m-%d-%H-%M")
    while name in used:
        when += dt.timedelta(minutes=1)
        name = "boreas-" + when.strftime("%Y-%m-%d-%H-%M")
    return name


def _boreas_start_us(name: str) -> int:
    return start_time_us(name[len("boreas-"):] + "-00")


# ---------------------------------------------------------------------------
# World along a polyline
# ---------------------------------------------------------------------------
def build_road_world(seed: int, track: DriveTrack, length_m: float) -> World:
    """A suburban road world around the first ``length_m`` (+ margin) of a drive."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_BOREAS_WORLD]))
    end = min(length_m + _ROAD_MARGIN_M, float(track.s_grid[-1]))
    sel = track.s_grid <= end
    xy, heading = track.xy_grid[sel], track.heading_grid[sel]
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    centre = xy + normal * LANE_OFFSET_M  # the road centre line is left of the lane driven
    seg = np.linalg.norm(np.diff(centre, axis=0), axis=1)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    road = PolylineRoad(centre, s, ROAD_HALF_WIDTH_M, SIDEWALK_M)
    b = PrimitiveBuilder()
    lamps: list[tuple[float, float, float]] = []
    driveway_slots: list[tuple[float, float, float]] = []
    pavement_slots: list[tuple[float, float]] = []

    def at(pos: float) -> tuple[np.ndarray, float, np.ndarray]:
        p = np.stack([np.interp(pos, s, centre[:, a]) for a in range(2)])
        h = float(np.interp(pos, s, heading))
        return p, h, np.array([-math.sin(h), math.cos(h)])

    clear = ROAD_HALF_WIDTH_M + SIDEWALK_M + 0.5
    n_buildings = 0
    for side in (1.0, -1.0):
        pos = float(rng.uniform(0.0, 8.0))
        while pos < s[-1] - 5.0:
            r = rng.random()
            if r < 0.1:  # open lot / park
                pos += rng.uniform(15.0, 40.0)
                continue
            commercial = r > 0.9
            width = rng.uniform(30.0, 60.0) if commercial else rng.uniform(10.0, 17.0)
            depth = rng.uniform(18.0, 30.0) if commercial else rng.uniform(9.0, 13.0)
            setback = rng.uniform(15.0, 28.0) if commercial else rng.uniform(6.0, 11.0)
            height = rng.uniform(5.0, 8.0) if commercial else rng.uniform(6.0, 9.5)
            mid, h, n = at(pos + width / 2)
            offset = clear + setback + depth / 2
            centre_xy = mid + side * n * offset
            t = np.array([math.cos(h), math.sin(h)])
            corners = [centre_xy + a * t * width / 2 + c * n * depth / 2 for a in (-1, 1) for c in (-1, 1)]
            dist, _ = road.distance(np.array([centre_xy, *corners]))
            if dist.min() < clear + 1.0:  # would stand on the road (curves, the route passing twice)
                pos += width / 2
                continue
            colour = srgb_to_linear(np.clip(FACADE_PALETTE[int(rng.integers(len(FACADE_PALETTE)))]
                                            * rng.uniform(0.85, 1.1, 3), 0, 255))
            glass = srgb_to_linear(np.clip(np.array([40, 48, 58]) * rng.uniform(0.7, 1.5), 0, 255))
            params = (rng.uniform(2.6, 4.2), rng.uniform(2.8, 3.3), rng.uniform(0.35, 0.6),
                      rng.uniform(0.4, 0.6) * (-1 if commercial else 1))
            half = np.array([width / 2, depth / 2])
            b.box((*(centre_xy - half), 0.0), (*(centre_xy + half), height), "building", colour, glass, params,
                  _u32(rng), yaw=h)
            n_buildings += 1
            if not commercial and rng.random() < 0.7:  # pitched-looking roof storey
                ridge = np.array([width / 2 - 0.5, depth * 0.2])
                roof = srgb_to_linear(rng.choice([[60, 55, 55], [90, 60, 45], [45, 45, 50]]))
                b.box((*(centre_xy - ridge), height), (*(centre_xy + ridge), height + rng.uniform(1.5, 2.5)),
                      "roof_storey", roof, glass, (0, 0, 0, 0), _u32(rng), yaw=h)
            yard = mid + side * n * (clear + setback / 2)
            if not commercial:
                if rng.random() < 0.6:
                    tx, ty = yard + t * rng.uniform(-width / 3, width / 3)
                    _tree(b, rng, float(tx), float(ty), rng.uniform(0.8, 1.3))
                dx, dy = yard + t * (width / 2 - 2.0)
                driveway_slots.append((float(dx), float(dy), h + math.pi / 2))
                if rng.random() < 0.25:  # hedge along the lot front
                    hc = mid + side * n * (clear + 0.6)
                    hh = np.array([width / 2 - 3.0, 0.4])
                    b.box((*(hc - hh), 0.0), (*(hc + hh), rng.uniform(0.8, 1.5)), "hedge",
                          srgb_to_linear([50, 80, 42]), (0, 0, 0), (0, 0, 0, 0), _u32(rng), yaw=h)
            else:
                for _ in range(int(rng.integers(2, 7))):  # cars in the parking lot, per run below
                    px, py = mid + side * n * (clear + rng.uniform(3.0, setback - 3.0)) + t * rng.uniform(-width / 2, width / 2)
                    driveway_slots.append((float(px), float(py), h + math.pi / 2 * int(rng.integers(2))))
            pos += width + rng.uniform(3.0, 8.0)
        # boulevard trees, lamps, hydrants along this side
        pos = float(rng.uniform(3.0, 15.0))
        lined = rng.random() < 0.7
        while pos < s[-1]:
            p, h, n = at(pos)
            if lined:
                tx, ty = p + side * n * (ROAD_HALF_WIDTH_M + SIDEWALK_M + 1.5)
                if road.distance(np.array([[tx, ty]]))[0][0] > ROAD_HALF_WIDTH_M + SIDEWALK_M:
                    _tree(b, rng, float(tx), float(ty), rng.uniform(0.8, 1.2))
            if side < 0 and rng.random() < 0.35:
                lx, ly = p + side * n * (ROAD_HALF_WIDTH_M + 0.5)
                hgt = rng.uniform(8.0, 10.0)
                b.cylinder((lx, ly), 0.12, 0.0, hgt, "pole", srgb_to_linear([120, 120, 115]), _u32(rng))
                hx, hy = p + side * n * (ROAD_HALF_WIDTH_M - 1.5)
                b.box((hx - 0.4, hy - 0.4, hgt - 0.3), (hx + 0.4, hy + 0.4, hgt), "lamp", srgb_to_linear([70, 70, 70]),
                      srgb_to_linear([255, 230, 180]), (0, 0, 0, 0), _u32(rng))
                lamps.append((float(hx), float(hy), hgt - 0.35))
            if rng.random() < 0.08:
                hx, hy = p + side * n * (ROAD_HALF_WIDTH_M + 0.6)
                b.cylinder((hx, hy), 0.15, 0.0, 0.8, "bin", srgb_to_linear([200, 160, 20]), _u32(rng))
            if rng.random() < 0.06:
                sx, sy = p + side * n * (ROAD_HALF_WIDTH_M + 0.8)
                b.cylinder((sx, sy), 0.05, 0.0, 2.8, "pole", srgb_to_linear([130, 130, 130]), _u32(rng))
                b.box((sx - 0.35, sy - 0.03, 2.2), (sx + 0.35, sy + 0.03, 2.9), "sign",
                      srgb_to_linear([[200, 30, 30], [235, 235, 235], [20, 90, 40]][int(rng.integers(3))]),
                      srgb_to_linear([240, 240, 240]), (0, 0, 0, 0), _u32(rng), yaw=h + math.pi / 2)
            wx, wy = p + side * n * (ROAD_HALF_WIDTH_M + SIDEWALK_M * rng.uniform(0.3, 0.8))
            pavement_slots.append((float(wx), float(wy)))
            pos += rng.uniform(12.0, 22.0) if lined else rng.uniform(25.0, 40.0)
    prims = b.build()
    route = Route(points=centre, s=s, heading=heading, length=float(s[-1]), corners=np.zeros((0, 2)))
    region = (float(centre[:, 0].min() - 90), float(centre[:, 0].max() + 90),
              float(centre[:, 1].min() - 90), float(centre[:, 1].max() + 90))
    world = World(seed=seed, grid=None, route=route, prims=prims,  # type: ignore[arg-type]
                  utm_origin=(float(track.origin[0]), float(track.origin[1])), rotation=0.0, region=region,
                  lamps=np.asarray(lamps, np.float64).reshape(-1, 3),
                  kerb_slots=np.asarray(driveway_slots, np.float64).reshape(-1, 3),
                  pavement_slots=np.asarray(pavement_slots, np.float64).reshape(-1, 2), park_blocks=[],
                  road=road, marking_rgb=tuple(float(v) for v in srgb_to_linear([230, 190, 40])))
    world.summary = {"route_length_m": float(s[-1]), "buildings": n_buildings, **prims.counts,
                     "utm_origin_easting_northing": world.utm_origin, "source_drive": track.drive.name}
    return world


def boreas_transients(world: World, rng: np.random.Generator, parked_fraction: float, pedestrian_count: int
                      ) -> Primitives:
    """Cars in driveways and parking lots (turned to their slots) and pedestrians on the sidewalks."""
    b = PrimitiveBuilder()
    slots = world.kerb_slots
    occupied = rng.random(len(slots)) < min(parked_fraction + 0.15, 0.9)
    for x, y, yaw in slots[occupied]:
        length, width = rng.uniform(4.2, 5.2), rng.uniform(1.8, 2.0)
        body = rng.uniform(0.9, 1.1) if rng.random() > 0.3 else rng.uniform(1.3, 1.6)  # SUVs
        colour = srgb_to_linear(CAR_PALETTE[int(rng.integers(len(CAR_PALETTE)))] * rng.uniform(0.85, 1.1))
        glass = srgb_to_linear([25, 30, 38])
        seed = _u32(rng)
        b.box((x - length / 2, y - width / 2, 0.25), (x + length / 2, y + width / 2, 0.25 + body), "car_body", colour,
              glass, (0, 0, 0, 0), seed, yaw=yaw)
        cab = rng.uniform(0.5, 0.62) * length / 2
        b.box((x - cab, y - width / 2 * 0.95, 0.25 + body), (x + cab, y + width / 2 * 0.95, 0.25 + body + 0.55),
              "car_cabin", colour, glass, (0, 0, 0, 0), seed, yaw=yaw)
    if pedestrian_count and len(world.pavement_slots):
        chosen = rng.choice(len(world.pavement_slots), size=min(pedestrian_count, len(world.pavement_slots)),
                            replace=False)
        for k in np.sort(chosen):
            x, y = world.pavement_slots[k]
            h = rng.uniform(1.45, 1.85)
            shirt = srgb_to_linear(CLOTHES_PALETTE[int(rng.integers(len(CLOTHES_PALETTE)))])
            b.cylinder((x, y), rng.uniform(0.18, 0.26), 0.0, h - 0.22, "pedestrian", shirt, _u32(rng))
            skin = srgb_to_linear(np.array([225, 185, 150]) * rng.uniform(0.45, 1.05))
            b.spheroid((x, y, h - 0.11), 0.11, 0.12, "head", skin, 0.0, _u32(rng))
    return b.build()


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------
@dataclass
class BoreasSubmap:
    timestamp: int  # written (shifted) LiDAR timestamp
    real_time: int  # real GPSTime of the pose
    s: float
    northing: float
    easting: float
    image_timestamps: list[int]
    image_real_times: list[int]


@dataclass
class BoreasRun:
    index: int
    name: str
    condition: RunCondition
    drive_index: int
    time_shift_us: int
    jitter: np.ndarray  # (3, 3) lateral / heading sinusoids (zeros for a real drive's first use)
    submaps: list[BoreasSubmap]


@dataclass
class BoreasPlan:
    seed: int
    cfg: SynthConfig
    world: World
    tracks: list[DriveTrack]
    runs: list[BoreasRun]

    def eval_runs(self) -> list[str]:
        names = [r.name for r in self.runs]
        n = self.cfg.n_eval_runs
        if n is None or n >= len(names):
            return names
        picks = np.unique(np.round(np.linspace(0, len(names) - 1, max(n, 2))).astype(int))
        return [names[i] for i in picks]


def plan_boreas(cfg: SynthConfig, poses_dir: PathLike | None = None, seed: int | None = None) -> BoreasPlan:
    """World around the first real drive, and every run's submaps and images (nothing rendered)."""
    seed = cfg.seed if seed is None else int(seed)
    drives = load_real_drives(poses_dir or default_boreas_poses_dir())
    origin = np.round(drives[0].lidar_en[0] / 100.0) * 100.0
    tracks = [DriveTrack.create(d, origin) for d in drives]
    world = build_road_world(seed, tracks[0], cfg.route_length_m)
    conditions = sample_conditions(seed, cfg.n_runs)
    used: set[str] = set()
    runs = []
    for index, cond in enumerate(conditions):
        name = _boreas_name(cond, used)
        used.add(name)
        d = index % len(tracks)
        track = tracks[d]
        drive = track.drive
        shift = _boreas_start_us(name) + int(cond.start_time_us % 60_000_000) - int(drive.lidar_t[0])
        rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_BOREAS_JITTER, index]))
        jitter = np.zeros((3, 3))
        if index >= len(tracks):  # a real drive driven again: small lateral and heading deviations
            jitter[0] = [rng.uniform(0.2, 0.5), rng.uniform(60, 200), rng.uniform(0, 2 * np.pi)]
            jitter[1] = [math.radians(cond.heading_jitter_deg) * 0.7, rng.uniform(15, 45), rng.uniform(0, 2 * np.pi)]
            jitter[2] = [rng.uniform(-0.4, 0.4), 1.0, 0.0]
        length = min(cfg.route_length_m, float(track.pose_s[-1]) - 1.0)
        targets = np.arange(cond.submap_phase_m, length, SUBMAP_SPACING_M)
        idx = np.searchsorted(track.pose_s, targets)
        idx = np.unique(np.clip(idx, 0, len(track.pose_s) - 1))
        submaps = []
        for i in idx.tolist():
            real_t = int(drive.lidar_t[i])
            s = float(track.pose_s[i])
            xy, _ = _run_pose(track, jitter, s)
            north, east = world.local_to_utm(xy)
            j0 = int(np.searchsorted(drive.camera_t, real_t))
            near = drive.camera_t[max(j0 - cfg.images_per_submap - 1, 0): j0 + cfg.images_per_submap + 1]
            order = np.lexsort((near, np.abs(near - real_t)))[: cfg.images_per_submap]
            cam_real = [int(near[j]) for j in order]
            submaps.append(BoreasSubmap(real_t + shift, real_t, s, float(north), float(east),
                                        [t + shift for t in cam_real], cam_real))
        runs.append(BoreasRun(index, name, cond, d, shift, jitter, submaps))
    runs.sort(key=lambda r: r.name)
    return BoreasPlan(seed, cfg, world, tracks, runs)


def _run_pose(track: DriveTrack, jitter: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    xy, heading, normal = track.pose(s)
    lateral = jitter[2, 0] + jitter[0, 0] * math.sin(2 * math.pi * s / jitter[0, 1] + jitter[0, 2]) if jitter[0, 1] else 0.0
    dh = jitter[1, 0] * math.sin(2 * math.pi * s / jitter[1, 1] + jitter[1, 2]) if jitter[1, 1] else 0.0
    return xy + normal * lateral, float(heading) + dh


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
@dataclass
class _BoreasState:
    plan: BoreasPlan
    camera: CameraModel
    lidar: Any
    prims: dict[int, Primitives] = field(default_factory=dict)


_BSTATE: _BoreasState | None = None


def _make_state(plan: BoreasPlan) -> _BoreasState:
    from distilvpr_lib.data.synth.generate import make_lidar_model

    cfg = plan.cfg
    return _BoreasState(plan, CameraModel.create(cfg.image_width, cfg.image_height, cfg.camera_hfov_deg),
                        make_lidar_model(cfg))


def _run_prims(state: _BoreasState, run: BoreasRun) -> Primitives:
    if run.index not in state.prims:
        while len(state.prims) >= 4:
            state.prims.pop(next(iter(state.prims)))
        cond = run.condition
        rng = np.random.default_rng(np.random.SeedSequence([state.plan.seed, _TAG_BOREAS_TRANSIENTS, run.index]))
        transients = boreas_transients(state.plan.world, rng, cond.parked_fraction, cond.pedestrian_count)
        state.prims[run.index] = apply_season(state.plan.world.prims.concat(transients), cond.crown_scale,
                                              cond.foliage_porosity, cond.leaf_color)
    return state.prims[run.index]


def render_boreas_cloud(state: _BoreasState, run: BoreasRun, sp: BoreasSubmap) -> np.ndarray:
    """(4096, 3) float32 metric cloud in the LiDAR frame (x forward, y left, z up), ground removed."""
    plan = state.plan
    track = plan.tracks[run.drive_index]
    xy, heading = _run_pose(track, run.jitter, sp.s)
    seeds = np.random.SeedSequence([plan.seed, _TAG_BOREAS_SCAN, run.index, sp.real_time & 0xFFFFFFFF])
    rng = np.random.default_rng(seeds)
    salt = int(seeds.generate_state(1)[0])
    pts = scan(state.lidar, _run_prims(state, run), xy, heading, run.condition.lidar_dropout,
               run.condition.lidar_range_noise, rng, salt)
    c, s_ = math.cos(heading), math.sin(heading)
    dx, dy = pts[:, 0] - xy[0], pts[:, 1] - xy[1]
    local = np.stack([c * dx + s_ * dy, -s_ * dx + c * dy, pts[:, 2] - LIDAR_HEIGHT_M], axis=1)
    keep = (pts[:, 2] >= GROUND_REMOVAL_Z_M) & (np.hypot(local[:, 0], local[:, 1]) <= CLOUD_RANGE_M)
    down = voxel_downsample(local[keep], CLOUD_VOXEL_M)
    if len(down) == 0:
        down = np.zeros((1, 3))
    rng_s = np.random.default_rng(np.random.SeedSequence([plan.seed, _TAG_BOREAS_SAMPLE, run.index, sp.timestamp]))
    return sample_to_count(down, 4096, rng_s).astype(np.float32)


def render_boreas_image(state: _BoreasState, run: BoreasRun, image_ts: int, real_time: int) -> np.ndarray:
    """(H, W, 3) uint8 forward image at a real camera time of the run's drive."""
    plan = state.plan
    track = plan.tracks[run.drive_index]
    s = float(track.arc_at_time(real_time))
    xy, heading = _run_pose(track, run.jitter, s)
    key = int(np.random.SeedSequence([plan.seed, _TAG_BOREAS_FRAME, run.index, image_ts & 0xFFFFFFFF,
                                      image_ts >> 32]).generate_state(1)[0])
    return render_image(plan.world, _run_prims(state, run), run.condition, state.camera, xy, heading, key,
                        shadows=plan.cfg.camera_shadows)


def calibration_texts(camera: CameraModel) -> tuple[str, str]:
    """``P0`` (3x4 projection) and ``T_camera_lidar`` (4x4) as text, KITTI-like whitespace-separated rows.

    Camera frame: x right, y down, z forward, ``CAMERA_HEIGHT_M`` above the ground, pitched by
    ``CAMERA_PITCH_DEG``; LiDAR frame: x forward, y left, z up at ``LIDAR_HEIGHT_M``.
    """
    fx = 0.5 * camera.width / math.tan(math.radians(camera.hfov_deg) / 2)
    p0 = np.array([[fx, 0, camera.width / 2, 0], [0, fx, camera.height / 2, 0], [0, 0, 1, 0]])
    lidar_to_vehicle_cam = np.array([[0, -1, 0], [0, 0, -1], [1, 0, 0]], dtype=np.float64)  # fwd/left/up -> right/down/fwd
    p = math.radians(-CAMERA_PITCH_DEG)
    pitch = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rot = pitch @ lidar_to_vehicle_cam
    t = rot @ np.array([0.0, 0.0, LIDAR_HEIGHT_M - CAMERA_HEIGHT_M])
    T = np.eye(4)
    T[:3, :3] = rot
    T[:3, 3] = t
    fmt = lambda m: "\n".join(" ".join(f"{v:.12e}" for v in row) for row in m) + "\n"  # noqa: E731
    return fmt(p0), fmt(T)


def _boreas_job(job: tuple[int, list[int], str]) -> tuple[int, int, float, float]:
    from distilvpr_lib.data.synth.generate import encode_png

    run_pos, submap_ids, out_dir = job
    state = _BSTATE
    assert state is not None
    run = state.plan.runs[run_pos]
    out = Path(out_dir) / run.name
    p0_text, t_text = calibration_texts(state.camera)
    clouds = images = 0
    lidar_s = camera_s = 0.0
    for i in submap_ids:
        sp = run.submaps[i]
        t0 = time.perf_counter()
        cloud_path = out / BOREAS_CLOUD_FOLDER / f"{sp.timestamp}.npy"
        if not cloud_path.is_file():
            write_npy_cloud(cloud_path, render_boreas_cloud(state, run, sp))
            clouds += 1
        for folder, text in ((P0_FOLDER, p0_text), (T_CAMERA_LIDAR_FOLDER, t_text)):
            path = out / folder / f"{sp.timestamp}.txt"
            if not path.is_file():
                with atomic_write(path, "w") as f:
                    f.write(text)
        t1 = time.perf_counter()
        for ts, real in zip(sp.image_timestamps, sp.image_real_times):
            path = out / BOREAS_IMAGE_FOLDER / f"{ts}.png"
            if not path.is_file():
                with atomic_write(path, "wb") as f:
                    f.write(encode_png(render_boreas_image(state, run, ts, real)))
                images += 1
        lidar_s += t1 - t0
        camera_s += time.perf_counter() - t1
    return clouds, images, lidar_s, camera_s


def _init_boreas_worker(cfg_dict: dict[str, Any], poses_dir: str, seed: int) -> None:
    global _BSTATE
    _BSTATE = _make_state(plan_boreas(SynthConfig(**cfg_dict), poses_dir, seed))


# ---------------------------------------------------------------------------
# Splits and driver
# ---------------------------------------------------------------------------
def choose_test_squares(positions: np.ndarray, route_positions: np.ndarray, fraction: float,
                        half_widths: tuple[float, ...] = (OXFORD_TEST_SQUARE_HALF_WIDTH_M, 100.0, 70.0, 50.0, 35.0)
                        ) -> list[tuple[float, float, float]]:
    """Squares centred on evenly spaced route points whose union holds about ``fraction`` of ``positions``.

    The largest half-width (the Oxford 150 m first) and then the fewest squares that come within
    5 % of the fraction win; short routes get smaller squares so a training region remains.

    Args:
        positions: (N, 2) ``[northing, easting]`` of all submaps.
        route_positions: (M, 2) ``[northing, easting]`` of the first run's submaps in driving order.
    """
    best: list[tuple[float, float, float]] = []
    best_err = math.inf
    for half_width in half_widths:
        for n in range(1, max(2, len(route_positions) // 10)):
            picks = route_positions[((np.arange(n) + 0.5) / n * len(route_positions)).astype(int)]
            squares = [(float(p[0]), float(p[1]), float(half_width)) for p in picks]
            err = abs(float(in_squares(positions, squares).mean()) - fraction)
            if err < best_err - 1e-9:
                best, best_err = squares, err
        if best_err <= 0.05:
            break
    return best


def _keep_neighbours_only_for(query_sets: list[dict[int, dict[Any, Any]]], masks: list[np.ndarray]) -> None:
    """Empty the true-neighbour lists of query entries whose mask is False (they are skipped at evaluation)."""
    for entries, mask in zip(query_sets, masks):
        for k, entry in entries.items():
            if not mask[k]:
                for key in [key for key in entry if isinstance(key, int)]:
                    entry[key] = []


def build_boreas_benchmark(dataset_dir: PathLike, plan: BoreasPlan) -> dict[str, Any]:
    """Write the Boreas benchmark pickles (Oxford radii, squares along the route); returns a summary."""
    out = Path(dataset_dir)
    locations = []
    for run in plan.runs:
        rel = [f"{run.name}/{BOREAS_CLOUD_FOLDER}/{sp.timestamp}.npy" for sp in run.submaps]
        locations.append(RunLocations(run.name, rel, np.array([sp.timestamp for sp in run.submaps], np.int64),
                                      np.array([[sp.northing, sp.easting] for sp in run.submaps], np.float64)))
    all_positions = np.concatenate([loc.positions for loc in locations])
    first = min(plan.runs, key=lambda r: r.index)
    route_positions = locations[plan.runs.index(first)].positions
    squares = choose_test_squares(all_positions, route_positions, plan.cfg.test_fraction)
    names = [r.name for r in plan.runs]
    train = locations[:-1] if len(locations) > 1 else locations
    rel = [p for loc in train for p in loc.rel_paths]
    ts = np.concatenate([loc.timestamps for loc in train])
    pos = np.concatenate([loc.positions for loc in train])
    region = ~in_squares(pos, squares)
    validation = choose_validation_squares(pos[region], DataConfig().validation_fraction,
                                           [(n, e) for n, e, _ in squares])
    in_val = in_squares(pos, validation) & region
    guard = (distance_to_squares(pos, validation) < NON_NEGATIVE_RADIUS_M) & region & ~in_val
    keep = np.flatnonzero(region & ~in_val & ~guard)
    tuples = make_training_tuples([rel[i] for i in keep], ts[keep], pos[keep])
    eval_names = plan.eval_runs()
    eval_locs = [locations[names.index(n)] for n in eval_names]
    # Boreas evaluation reuses the database embeddings as queries (METHOD.md §7), so every query set lists
    # exactly its database entries, index for index; entries that are not queries get empty neighbour lists.
    everything = [np.ones(len(loc.rel_paths), bool) for loc in eval_locs]
    test_db, test_q = make_evaluation_sets(eval_locs, everything)
    _keep_neighbours_only_for(test_q, [in_squares(loc.positions, squares) for loc in eval_locs])
    outside = [~in_squares(loc.positions, squares) for loc in eval_locs]
    val_db, val_q = make_evaluation_sets(eval_locs, outside, database_masks=outside)
    _keep_neighbours_only_for(val_q, [in_squares(loc.positions[o], validation) for loc, o in zip(eval_locs, outside)])
    for name, obj in ((TRAINING_PICKLE, tuples), (TEST_DATABASE_PICKLE, test_db), (TEST_QUERY_PICKLE, test_q),
                      (VALIDATION_DATABASE_PICKLE, val_db), (VALIDATION_QUERY_PICKLE, val_q)):
        save_pickle(out / name, obj)
    info = {"test_squares": [list(s) for s in squares], "validation_squares": [list(v) for v in validation],
            "train_runs": [loc.run for loc in train], "eval_runs": eval_names}
    with atomic_write(out / SQUARES_JSON, "w") as f:
        json.dump(info, f, indent=2)
    return {"training_tuples": len(tuples), "test_query": _count_queries(test_q),
            "validation_query": _count_queries(val_q), "test_squares": squares, "validation_squares": validation}


def _count_queries(query_sets: list[dict[int, dict[Any, Any]]]) -> list[int]:
    """Per run, the entries that have a true neighbour in some other run (the evaluated queries)."""
    return [sum(any(len(v) for k, v in e.items() if isinstance(k, int)) for e in q.values()) for q in query_sets]


def generate_boreas_dataset(out_dir: PathLike, cfg: SynthConfig, seed: int | None = None, workers: int | None = None,
                            progress: bool | Callable[[int, int], None] = True,
                            poses_dir: PathLike | None = None) -> "GenerationReport":  # noqa: F821
    """Generate (or complete) a Boreas-layout dataset in ``out_dir``; see the module docstring."""
    from distilvpr_lib.data.synth.generate import (
        COMPLETE_FILE,
        CONFIG_FILE,
        GENERATOR_VERSION,
        MANIFEST_FILE,
        GenerationReport,
        _config_record,
        _json_bytes,
        _write_if_changed,
    )
    from distilvpr_lib.data.splits import write_lidar2image_ndx

    start = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seed = cfg.seed if seed is None else int(seed)
    workers = cfg.workers if workers is None else int(workers)
    poses = Path(poses_dir) if poses_dir is not None else default_boreas_poses_dir()
    record = _config_record(cfg, seed, "boreas")
    config_path = out / CONFIG_FILE
    if config_path.is_file() and json.loads(config_path.read_text()) != json.loads(_json_bytes(record)):
        raise ValueError(f"{config_path}: {out} holds a dataset generated with other settings or seed; "
                         "use another folder or delete it")
    _write_if_changed(config_path, _json_bytes(record))
    plan = plan_boreas(cfg, poses, seed)
    report = GenerationReport(out, seed, [r.name for r in plan.runs], world_summary=dict(plan.world.summary))
    report.clouds_total = sum(len(r.submaps) for r in plan.runs)
    report.images_total = sum(len({t for sp in r.submaps for t in sp.image_timestamps}) for r in plan.runs)
    if (out / COMPLETE_FILE).is_file():
        report.already_complete = True
        report.total_seconds = time.perf_counter() - start
        return report
    manifest = {"generator_version": GENERATOR_VERSION, "seed": seed, "layout": "boreas", "world": plan.world.summary,
                "runs": [{**r.condition.to_dict(), "name": r.name, "oxford_style_name": r.condition.name,
                          "index": r.index, "source_drive": plan.tracks[r.drive_index].drive.name,
                          "time_shift_us": r.time_shift_us} for r in plan.runs],
                "eval_runs": plan.eval_runs()}
    _write_if_changed(out / MANIFEST_FILE, _json_bytes(manifest))
    for run in plan.runs:
        write_locations_csv(out / run.name / LOCATIONS_CSV, [sp.timestamp for sp in run.submaps],
                            [sp.northing for sp in run.submaps], [sp.easting for sp in run.submaps])
    jobs = []
    total = 0
    for pos, run in enumerate(plan.runs):
        todo = []
        for i, sp in enumerate(run.submaps):
            missing = not (out / run.name / BOREAS_CLOUD_FOLDER / f"{sp.timestamp}.npy").is_file()
            missing |= any(not (out / run.name / BOREAS_IMAGE_FOLDER / f"{t}.png").is_file() for t in sp.image_timestamps)
            missing |= any(not (out / run.name / f / f"{sp.timestamp}.txt").is_file() for f in (P0_FOLDER, T_CAMERA_LIDAR_FOLDER))
            if missing:
                todo.append(i)
        for chunk in range(0, len(todo), 12):
            part = todo[chunk:chunk + 12]
            jobs.append((pos, part, str(out)))
            total += len(part)
    bar = None
    if progress is True and total:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"synth {out.name} (boreas)", unit="submap")
    done = 0

    def update(result: tuple[int, int, float, float], n: int) -> None:
        nonlocal done
        report.clouds_written += result[0]
        report.images_written += result[1]
        report.lidar_seconds += result[2]
        report.camera_seconds += result[3]
        done += n
        if bar is not None:
            bar.update(n)
        elif callable(progress):
            progress(done, total)

    global _BSTATE
    if jobs:
        if workers <= 1:
            previous = _BSTATE
            _BSTATE = _make_state(plan)
            try:
                for job in jobs:
                    update(_boreas_job(job), len(job[1]))
            finally:
                _BSTATE = previous
        else:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(workers, initializer=_init_boreas_worker,
                          initargs=(dataclasses.asdict(cfg), str(poses), seed)) as pool:
                for job, result in zip(jobs, pool.imap(_boreas_job, jobs)):
                    update(result, len(job[1]))
    if bar is not None:
        bar.close()
    ndx = {sp.timestamp: list(sp.image_timestamps) for r in plan.runs for sp in r.submaps}
    write_lidar2image_ndx(out / LIDAR2IMAGE_PICKLE, dict(sorted(ndx.items())))
    report.splits_summary = build_boreas_benchmark(out, plan)
    complete = {"generator_version": GENERATOR_VERSION, "seed": seed, "runs": report.runs, "layout": "boreas",
                "clouds": report.clouds_total, "images": report.images_total}
    with atomic_write(out / COMPLETE_FILE, "wb") as f:
        f.write(_json_bytes(complete))
    report.total_seconds = time.perf_counter() - start
    return report
