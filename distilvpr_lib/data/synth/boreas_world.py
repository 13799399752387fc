"""The Boreas world: the real drives (``boreas_poses/<run>/applanix/*_poses.csv``) as smooth tracks, and a
suburban road built along the first one (detached houses and low commercial blocks turned to face the road,
front yards, boulevard trees, lamps), plus each run's parked cars and pedestrians (docs/METHOD.md §2.2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.data.files import PathLike
from distilvpr_lib.paths import real_data_dir
from distilvpr_lib.data.synth.world import (
    CAR_PALETTE,
    CLOTHES_PALETTE,
    FACADE_PALETTE,
    PolylineRoad,
    PrimitiveBuilder,
    Primitives,
    Route,
    World,
    add_tree,
    random_u32,
    srgb_to_linear,
)

#: Carriageway half-width and sidewalk width of the generated road (m); the vehicle drives one
#: lane right of the centre line (right-hand traffic).
ROAD_HALF_WIDTH_M = 7.5
SIDEWALK_M = 1.8
LANE_OFFSET_M = 1.8
#: Extra road built beyond the used part of the route (m).
_ROAD_MARGIN_M = 80.0
_TAG_BOREAS_WORLD = 700


def default_boreas_poses_dir() -> Path:
    """``$DISTILVPR_REAL_DATA/boreas_poses``, else ``../shared/data/real/boreas_poses`` beside the repository."""
    return real_data_dir() / "boreas_poses"


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
                  random_u32(rng), yaw=h)
            n_buildings += 1
            if not commercial and rng.random() < 0.7:  # pitched-looking roof storey
                ridge = np.array([width / 2 - 0.5, depth * 0.2])
                roof = srgb_to_linear(rng.choice([[60, 55, 55], [90, 60, 45], [45, 45, 50]]))
                b.box((*(centre_xy - ridge), height), (*(centre_xy + ridge), height + rng.uniform(1.5, 2.5)),
                      "roof_storey", roof, glass, (0, 0, 0, 0), random_u32(rng), yaw=h)
            yard = mid + side * n * (clear + setback / 2)
            if not commercial:
                if rng.random() < 0.6:
                    tx, ty = yard + t * rng.uniform(-width / 3, width / 3)
                    add_tree(b, rng, float(tx), float(ty), rng.uniform(0.8, 1.3))
                dx, dy = yard + t * (width / 2 - 2.0)
                driveway_slots.append((float(dx), float(dy), h + math.pi / 2))
                if rng.random() < 0.25:  # hedge along the lot front
                    hc = mid + side * n * (clear + 0.6)
                    hh = np.array([width / 2 - 3.0, 0.4])
                    b.box((*(hc - hh), 0.0), (*(hc + hh), rng.uniform(0.8, 1.5)), "hedge",
                          srgb_to_linear([50, 80, 42]), (0, 0, 0), (0, 0, 0, 0), random_u32(rng), yaw=h)
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
                    add_tree(b, rng, float(tx), float(ty), rng.uniform(0.8, 1.2))
            if side < 0 and rng.random() < 0.35:
                lx, ly = p + side * n * (ROAD_HALF_WIDTH_M + 0.5)
                hgt = rng.uniform(8.0, 10.0)
                b.cylinder((lx, ly), 0.12, 0.0, hgt, "pole", srgb_to_linear([120, 120, 115]), random_u32(rng))
                hx, hy = p + side * n * (ROAD_HALF_WIDTH_M - 1.5)
                b.box((hx - 0.4, hy - 0.4, hgt - 0.3), (hx + 0.4, hy + 0.4, hgt), "lamp", srgb_to_linear([70, 70, 70]),
                      srgb_to_linear([255, 230, 180]), (0, 0, 0, 0), random_u32(rng))
                lamps.append((float(hx), float(hy), hgt - 0.35))
            if rng.random() < 0.08:
                hx, hy = p + side * n * (ROAD_HALF_WIDTH_M + 0.6)
                b.cylinder((hx, hy), 0.15, 0.0, 0.8, "bin", srgb_to_linear([200, 160, 20]), random_u32(rng))
            if rng.random() < 0.06:
                sx, sy = p + side * n * (ROAD_HALF_WIDTH_M + 0.8)
                b.cylinder((sx, sy), 0.05, 0.0, 2.8, "pole", srgb_to_linear([130, 130, 130]), random_u32(rng))
                b.box((sx - 0.35, sy - 0.03, 2.2), (sx + 0.35, sy + 0.03, 2.9), "sign",
                      srgb_to_linear([[200, 30, 30], [235, 235, 235], [20, 90, 40]][int(rng.integers(3))]),
                      srgb_to_linear([240, 240, 240]), (0, 0, 0, 0), random_u32(rng), yaw=h + math.pi / 2)
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
        seed = random_u32(rng)
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
            b.cylinder((x, y), rng.uniform(0.18, 0.26), 0.0, h - 0.22, "pedestrian", shirt, random_u32(rng))
            skin = srgb_to_linear(np.array([225, 185, 150]) * rng.uniform(0.45, 1.05))
            b.spheroid((x, y, h - 0.11), 0.11, 0.12, "head", skin, 0.0, random_u32(rng))
    return b.build()


__all__ = ["DriveTrack", "LANE_OFFSET_M", "ROAD_HALF_WIDTH_M", "RealDrive", "SIDEWALK_M", "boreas_transients",
           "build_road_world", "default_boreas_poses_dir", "load_real_drives"]
