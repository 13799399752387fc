"""Multi-beam LiDAR scans and PointNetVLAD-style 20 m submaps.

A roof-mounted scanner (``beams`` elevation channels × ``azimuth_steps`` over 360°) is ray cast
against the same primitives as the camera at a few poses along a 20 m window of the trajectory.
The returns (with per-run dropout and range noise, and foliage that lets rays through) are merged
in the window frame (x forward along the heading at the window centre, y left, z up), the ground
and everything outside the crop box are removed, the rest is voxel-downsampled, sampled (or
duplicated) to exactly 4096 points and normalised as PointNetVLAD's ``generate_submaps.m`` does:
centred on the centroid, scaled to a mean distance of 0.5, clipped to [-1, 1] and negated (so the
stored frame is x backward, y right, z down, like the real Oxford submaps of the fixture).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from distilvpr_lib.config import POINTS_PER_CLOUD, SynthConfig
from distilvpr_lib.data.synth.raycast import HIT_GROUND, HIT_NONE, cast_rays
from distilvpr_lib.data.synth.tiling import grid_tiles, select_primitives
from distilvpr_lib.data.synth.world import Primitives

#: Height of the scanner above the ground (m).
LIDAR_HEIGHT_M = 2.0
#: Returns closer than this are the vehicle itself (m).
LIDAR_MIN_RANGE_M = 2.0
#: Points lower than this above the ground are removed as ground (m).
GROUND_REMOVAL_Z_M = 0.3


@dataclass
class LidarModel:
    """Scanner geometry and submap assembly settings.

    ``directions`` (A, B, 3) float64 unit directions in the sensor frame (x forward, y left, z up)
    for A azimuth steps and B beams.
    """

    beams: int
    azimuth_steps: int
    min_elevation_deg: float
    max_elevation_deg: float
    max_range_m: float
    crop_x_m: float
    crop_y_m: float
    max_height_m: float
    voxel_m: float
    directions: np.ndarray

    @classmethod
    def create(cls, beams: int, azimuth_steps: int, min_elevation_deg: float, max_elevation_deg: float,
               max_range_m: float, crop_x_m: float, crop_y_m: float, max_height_m: float, voxel_m: float
               ) -> "LidarModel":
        el = np.radians(np.linspace(min_elevation_deg, max_elevation_deg, beams))
        az = np.arange(azimuth_steps) * (2 * np.pi / azimuth_steps) - np.pi
        aa, ee = np.meshgrid(az, el, indexing="ij")
        d = np.stack([np.cos(ee) * np.cos(aa), np.cos(ee) * np.sin(aa), np.sin(ee)], axis=-1)
        return cls(beams, azimuth_steps, min_elevation_deg, max_elevation_deg, max_range_m, crop_x_m, crop_y_m,
                   max_height_m, voxel_m, d)

    @property
    def rays_per_scan(self) -> int:
        return self.beams * self.azimuth_steps


def make_lidar_model(cfg: "SynthConfig") -> LidarModel:
    """The :class:`LidarModel` of a :class:`SynthConfig`."""
    return LidarModel.create(cfg.lidar_beams, cfg.lidar_azimuth_steps, cfg.lidar_min_elevation_deg,
                             cfg.lidar_max_elevation_deg, cfg.lidar_max_range_m, cfg.submap_crop_m[0],
                             cfg.submap_crop_m[1], cfg.submap_max_height_m, cfg.submap_voxel_m)


def scan(model: LidarModel, prims: Primitives, position: np.ndarray, heading: float, dropout: float,
         range_noise_m: float, rng: np.random.Generator, salt: int) -> np.ndarray:
    """One 360° sweep from ``position`` (local xy) with yaw ``heading``.

    Args:
        dropout: probability that a return is lost.
        range_noise_m: standard deviation of the range noise.
        rng: the scan's generator (azimuth offset, dropout, noise).
        salt: integer for the foliage pass-through hash.

    Returns:
        (M, 3) float64 points in the local world frame (ground hits excluded).
    """
    origin = np.array([position[0], position[1], LIDAR_HEIGHT_M], dtype=np.float64)
    offset = float(rng.uniform(0.0, 2 * np.pi / model.azimuth_steps))
    yaw = heading + offset
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    d = (model.directions @ rot.T).astype(np.float32)  # (A, B, 3)
    tiles, ids = grid_tiles(d, (10, 8))
    local = select_primitives(prims, origin, model.max_range_m)
    hits = cast_rays(local, tiles, ids, salt, model.max_range_m, ground=True)
    t = hits.t.ravel()
    kind = hits.kind.ravel()
    keep = (kind != HIT_NONE) & (kind != HIT_GROUND) & (t >= LIDAR_MIN_RANGE_M)
    keep &= rng.random(len(t)) >= dropout
    idx = np.flatnonzero(keep)
    r = t[idx].astype(np.float64) + rng.normal(0.0, range_noise_m, len(idx))
    dirs = tiles.directions.reshape(-1, 3)[idx].astype(np.float64)
    return origin + dirs * r[:, None]


def window_points(scans: list[np.ndarray], centre: np.ndarray, heading: float, model: LidarModel) -> np.ndarray:
    """Merge world-frame scans into the window frame and crop (ground removed). Returns (M, 3) float64."""
    pts = np.concatenate(scans) if scans else np.zeros((0, 3))
    c, s = math.cos(heading), math.sin(heading)
    dx = pts[:, 0] - centre[0]
    dy = pts[:, 1] - centre[1]
    x = c * dx + s * dy
    y = -s * dx + c * dy
    z = pts[:, 2]
    keep = (np.abs(x) <= model.crop_x_m) & (np.abs(y) <= model.crop_y_m) & (z >= GROUND_REMOVAL_Z_M) & \
        (z <= model.max_height_m)
    return np.stack([x[keep], y[keep], z[keep]], axis=1)


def voxel_downsample(points: np.ndarray, voxel: float) -> np.ndarray:
    """Centroid of the points in each occupied voxel of size ``voxel`` (deterministic order)."""
    if len(points) == 0:
        return points
    keys = np.floor(points / voxel).astype(np.int64)
    keys -= keys.min(axis=0)
    span = keys.max(axis=0) + 1
    flat = (keys[:, 0] * span[1] + keys[:, 1]) * span[2] + keys[:, 2]
    uniq, inverse = np.unique(flat, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(uniq)).astype(np.float64)
    out = np.empty((len(uniq), 3))
    for a in range(3):
        out[:, a] = np.bincount(inverse, weights=points[:, a], minlength=len(uniq)) / counts
    return out


def sample_to_count(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``count`` points: a random subset, or all points plus random duplicates."""
    n = len(points)
    if n == 0:
        raise ValueError("cannot sample a submap from an empty point set")
    if n >= count:
        chosen = np.sort(rng.choice(n, size=count, replace=False))
        return points[chosen]
    extra = rng.choice(n, size=count - n, replace=True)
    return np.concatenate([points, points[extra]])


def normalise_submap(points: np.ndarray) -> np.ndarray:
    """PointNetVLAD normalisation: centroid to 0, mean distance 0.5, clip to [-1, 1], negate.

    Args:
        points: (4096, 3) metric points.

    Returns:
        (4096, 3) float64.
    """
    p = points - points.mean(axis=0)
    mean_dist = float(np.mean(np.linalg.norm(p, axis=1)))
    p = p * (0.5 / max(mean_dist, 1e-9))
    return -np.clip(p, -1.0, 1.0)


def make_submap(window: np.ndarray, model: LidarModel, rng: np.random.Generator) -> np.ndarray:
    """Window points (M, 3) -> (4096, 3) float64 normalised submap.

    The voxel size shrinks (down to a third) until at least 4096 voxels are occupied, so sparse
    windows keep their detail; duplicates fill the rest only when even that is not enough.
    """
    voxel = model.voxel_m
    down = voxel_downsample(window, voxel)
    for _ in range(6):
        if len(down) >= POINTS_PER_CLOUD:
            break
        voxel *= 0.8
        down = voxel_downsample(window, voxel)
    return normalise_submap(sample_to_count(down, POINTS_PER_CLOUD, rng))
