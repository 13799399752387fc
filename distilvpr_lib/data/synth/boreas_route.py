"""Procedural Boreas drives: repeated drives of one generated suburban route, from a seed alone.

The real-poses variant reads the Boreas Applanix poses (:func:`.boreas_world.load_real_drives`); this
module makes drives of the same form (:class:`.boreas_world.RealDrive`: LiDAR and camera timestamps
with UTM positions) without any file, so that the rest of the Boreas pipeline — the road world built
along the first drive, the writer and the benchmark pickles (:mod:`.boreas`) — runs unchanged
(docs/DATA.md, "The procedural Boreas world").

The route (:func:`procedural_route`): legs on a street grid turned by a random angle, alternating
between the route's main direction and a side street (60°–90° left or right), joined by circular
corners (radius 15–25 m), every leg gently curved. The route never heads back against its main
direction and every leg is at least ``MIN_LEG_M`` long, so parts of the route that are far apart
along it stay at least ``ROUTE_CLEARANCE_M`` apart (checked; a failing draw is redrawn from the next
sub-seed).

The drives (:func:`procedural_drives`), one per run: drive 0 keeps to the lane centre line (the road
world is built along it); every other drive deviates from it by a smooth lateral offset of at most
``MAX_LATERAL_M``. Each drive has its own speed profile — a standing start, a cruise speed between
9 and 12 m/s with a slow modulation, slowing for corners (lateral acceleration ≤ 2 m/s²), a stop at
some corners, a stop at the end — hence its own timing; LiDAR poses every ≈ 103.7 ms (each ± 0.4 ms) and
camera frames every 100 ms, as in the real drives.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from distilvpr_lib.data.files import PathLike
from distilvpr_lib.data.synth.boreas_world import RealDrive, load_real_drives

#: ``--boreas-poses`` value (and ``poses_dir`` argument) that selects the procedural drives.
PROCEDURAL_POSES = "procedural"
#: UTM (zone 17) easting, northing of the route's start: where the real Boreas route starts (Toronto).
START_EASTING_NORTHING = (623_400.0, 4_848_800.0)
#: Shortest leg between two corners (m) and the clearance kept between distant parts of the route (m).
MIN_LEG_M = 150.0
ROUTE_CLEARANCE_M = 140.0
#: Largest lateral deviation of a drive from drive 0 (m).
MAX_LATERAL_M = 0.8
#: Route generated beyond ``route_length_m`` (m): the road world is built 80 m past the used part.
ROUTE_EXTRA_M = 120.0
#: LiDAR period and its jitter, camera period (µs).
LIDAR_PERIOD_US = 103_700
LIDAR_JITTER_US = 400
CAMERA_PERIOD_US = 100_000
#: Grid step of the route polyline (m), as :class:`.boreas_world.DriveTrack`.
STEP_M = 0.25
_ACCEL, _DECEL, _LATERAL_ACCEL = 1.2, 1.8, 2.0  # m/s²
_STOP_PROBABILITY = 0.4
_TAG_ROUTE, _TAG_DRIVE = 710, 711
_MAX_ATTEMPTS = 50


def is_procedural(poses_dir: PathLike | None) -> bool:
    """Whether a ``poses_dir`` argument selects the procedural drives: ``None`` or ``"procedural"``."""
    return poses_dir is None or (isinstance(poses_dir, str) and poses_dir == PROCEDURAL_POSES)


def checked_poses(poses_dir: PathLike) -> Path:
    """``poses_dir`` as a path, when it holds ``<run>/applanix/lidar_poses.csv``.

    Raises:
        FileNotFoundError: it does not.
    """
    path = Path(poses_dir)
    if not any(path.glob("*/applanix/lidar_poses.csv")):
        raise FileNotFoundError(f"{path}: no <run>/applanix/lidar_poses.csv (Boreas poses; pass a folder of real "
                                f"poses or {PROCEDURAL_POSES!r})")
    return path


def boreas_drives(poses_dir: PathLike | None, seed: int, n_runs: int, route_length_m: float) -> list[RealDrive]:
    """The drives of a Boreas world: :func:`procedural_drives` (``poses_dir`` ``None`` or ``"procedural"``)
    or the real drives of a poses folder (:func:`.boreas_world.load_real_drives`; ``seed``, ``n_runs`` and
    ``route_length_m`` unused)."""
    if is_procedural(poses_dir):
        return procedural_drives(seed, n_runs, route_length_m)
    return load_real_drives(poses_dir)  # type: ignore[arg-type]


def _route_headings(rng: np.random.Generator, length_m: float) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Heading (rad, relative to the main direction) every ``STEP_M`` over ``length_m``, and the corners.

    Returns:
        ``(heading (M,), corners)`` with corners as ``(arc length where the turn starts, turn radius)``.
    """
    knots_s, knots_h = [0.0], [0.0]
    corners: list[tuple[float, float]] = []
    s, h, side = 0.0, 0.0, False
    while s < length_m:
        leg = rng.uniform(MIN_LEG_M, 450.0) if not side else rng.uniform(MIN_LEG_M, 500.0)
        s += leg
        knots_s.append(s)
        knots_h.append(h)
        target = (rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(60.0, 90.0))) if not side else 0.0
        radius = rng.uniform(15.0, 25.0)
        corners.append((s, radius))
        s += radius * abs(target - h)
        h = target
        knots_s.append(s)
        knots_h.append(h)
        side = not side
    grid = np.arange(0.0, length_m + STEP_M / 2, STEP_M)
    heading = np.interp(grid, knots_s, knots_h)
    # gentle curvature along the legs (a few metres of sideways bow over a few hundred metres)
    amplitude, wavelength, phase = math.radians(rng.uniform(1.0, 3.0)), rng.uniform(250.0, 600.0), rng.uniform(0, 2 * math.pi)
    heading = heading + amplitude * np.sin(2 * math.pi * grid / wavelength + phase)
    return heading, corners


def _integrate(heading: np.ndarray) -> np.ndarray:
    """(M, 2) positions of a path starting at the origin with the given headings every ``STEP_M``."""
    mid = 0.5 * (heading[1:] + heading[:-1])
    steps = np.stack([np.cos(mid), np.sin(mid)], axis=1) * STEP_M
    return np.concatenate([np.zeros((1, 2)), np.cumsum(steps, axis=0)])


def route_clearance(xy: np.ndarray, s: np.ndarray, far_m: float = 2.5 * ROUTE_CLEARANCE_M,
                    up_to_m: float = 2.0 * ROUTE_CLEARANCE_M) -> float:
    """Smallest distance (m) between two points of a path that lie more than ``far_m`` apart along it.

    Args:
        xy: (M, 2) path positions; s: (M,) their arc lengths (increasing); points are taken every ~5 m.
        far_m: the arc-length separation that makes two points "distant parts" of the path.
        up_to_m: distances of ``up_to_m`` or more are not looked for.

    Returns:
        the distance, or ``inf`` when no two distant parts come closer than ``up_to_m``.
    """
    from scipy.spatial import cKDTree

    every = max(int(round(5.0 / max(float(np.median(np.diff(s))), 1e-9))), 1)
    pts, arc = xy[::every], s[::every]
    pairs = cKDTree(pts).query_pairs(up_to_m, output_type="ndarray")
    if len(pairs):
        pairs = pairs[np.abs(arc[pairs[:, 0]] - arc[pairs[:, 1]]) > far_m]
    if not len(pairs):
        return math.inf
    return float(np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1).min())


def procedural_route(seed: int, length_m: float) -> tuple[np.ndarray, np.ndarray, list[tuple[float, float]]]:
    """The route's lane centre line: positions relative to its start, headings, and corners.

    Args:
        seed: world seed (same seed -> same route).
        length_m: route length (m).

    Returns:
        ``(xy (M, 2) local metres, heading (M,) rad, corners [(arc length where the turn starts, radius)])``
        every ``STEP_M`` of arc length.

    Raises:
        RuntimeError: no draw kept the clearance (does not happen with the module's constants).
    """
    for attempt in range(_MAX_ATTEMPTS):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_ROUTE, attempt]))
        main = rng.uniform(0.0, 2 * math.pi)
        heading, corners = _route_headings(rng, length_m)
        heading = heading + main
        xy = _integrate(heading)
        s = np.arange(len(xy)) * STEP_M
        if route_clearance(xy, s) >= ROUTE_CLEARANCE_M:
            return xy, heading, corners
    raise RuntimeError(f"seed {seed}: no route of {length_m:.0f} m keeps {ROUTE_CLEARANCE_M:.0f} m clearance")


def _speed_profile(rng: np.random.Generator, s: np.ndarray, curvature: np.ndarray,
                   stops: list[int]) -> np.ndarray:
    """Speed (m/s) at every grid point: 0 at ``stops``, the start and the end; accelerations bounded."""
    cruise = rng.uniform(9.0, 12.0)
    wavelength, phase = rng.uniform(300.0, 800.0), rng.uniform(0, 2 * math.pi)
    limit = cruise * (1.0 + 0.08 * np.sin(2 * math.pi * s / wavelength + phase))
    limit = np.minimum(limit, np.sqrt(_LATERAL_ACCEL / np.maximum(np.abs(curvature), 1e-9)))
    limit[[0, -1, *stops]] = 0.0
    ds = np.diff(s)
    v = limit.copy()
    for i in range(1, len(v)):  # accelerate no faster than _ACCEL
        v[i] = min(v[i], math.sqrt(v[i - 1] ** 2 + 2 * _ACCEL * ds[i - 1]))
    for i in range(len(v) - 2, -1, -1):  # brake no harder than _DECEL
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2 * _DECEL * ds[i]))
    return v


def procedural_drives(seed: int, n_drives: int, route_length_m: float) -> list[RealDrive]:
    """``n_drives`` drives of one procedural route of ``route_length_m`` (+ ``ROUTE_EXTRA_M``).

    Args:
        seed: world seed (same seed -> identical drives; the route and every drive derive from it).
        n_drives: number of drives (the profile's ``synth.n_runs``), named ``procedural-00``, ...
        route_length_m: the used route length (the profile's ``synth.route_length_m``).

    Returns:
        drives with integer µs timestamps starting near 0.1 s (the writer shifts them to each run's date)
        and UTM zone 17 positions (LiDAR ``(N, 2)``, camera ``(K, 2)`` easting, northing).

    Raises:
        ValueError: ``n_drives < 1`` or ``route_length_m <= 0``.
    """
    if n_drives < 1:
        raise ValueError(f"synth.n_runs={n_drives}: the procedural Boreas world needs at least one drive")
    if not route_length_m > 0:
        raise ValueError(f"synth.route_length_m={route_length_m}: must be positive")
    length = float(route_length_m) + ROUTE_EXTRA_M
    route_xy, heading, corners = procedural_route(seed, length)
    s = np.arange(len(route_xy)) * STEP_M
    curvature = np.gradient(np.unwrap(heading), s)
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    start = np.asarray(START_EASTING_NORTHING, np.float64)
    drives = []
    for k in range(n_drives):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), _TAG_DRIVE, k]))
        lateral = np.zeros_like(s)
        if k > 0:  # another drive of the same route: a smooth deviation within the lane
            lateral += rng.uniform(-0.25, 0.25)
            for amp, lo, hi in ((rng.uniform(0.15, 0.4), 60.0, 200.0), (rng.uniform(0.05, 0.15), 15.0, 45.0)):
                lateral += amp * np.sin(2 * math.pi * s / rng.uniform(lo, hi) + rng.uniform(0, 2 * math.pi))
            lateral = np.clip(lateral, -MAX_LATERAL_M, MAX_LATERAL_M)
        path = route_xy + normal * lateral[:, None]
        stops = [int(np.searchsorted(s, max(c - 5.0, STEP_M))) for c, _ in corners
                 if c < length - 10.0 and rng.random() < _STOP_PROBABILITY]
        dwell = {i: rng.uniform(3.0, 25.0) for i in stops}
        v = _speed_profile(rng, s, curvature, stops)
        dt = 2 * np.diff(s) / np.maximum(v[1:] + v[:-1], 1e-6)
        # knots (time, arc length): the standing start, every grid point, a dwell at every stop
        start_wait = rng.uniform(5.0, 20.0)
        t_grid = start_wait + np.concatenate([[0.0], np.cumsum(dt)])
        for i in sorted(dwell):
            t_grid[i + 1:] += dwell[i]
        knot_t = np.concatenate([[0.0], t_grid, [t_grid[i] + dwell[i] for i in sorted(dwell)]])
        knot_s = np.concatenate([[0.0], s, [s[i] for i in sorted(dwell)]])
        order = np.argsort(knot_t, kind="stable")
        knot_t, knot_s = knot_t[order], knot_s[order]
        end_us = int(knot_t[-1] * 1e6)
        n_lidar = end_us // LIDAR_PERIOD_US + 1
        lidar_t = (CAMERA_PERIOD_US + int(rng.integers(0, LIDAR_PERIOD_US)) + np.arange(n_lidar, dtype=np.int64) * LIDAR_PERIOD_US
                   + rng.integers(-LIDAR_JITTER_US, LIDAR_JITTER_US + 1, n_lidar))
        camera_t = (int(lidar_t[0]) + int(rng.integers(-CAMERA_PERIOD_US + 1, CAMERA_PERIOD_US))
                    + np.arange(end_us // CAMERA_PERIOD_US + 1, dtype=np.int64) * CAMERA_PERIOD_US)

        def positions(t_us: np.ndarray) -> np.ndarray:
            arc = np.interp(t_us.astype(np.float64) / 1e6, knot_t, knot_s)
            return start + np.stack([np.interp(arc, s, path[:, a]) for a in range(2)], axis=1)

        drives.append(RealDrive(f"procedural-{k:02d}", lidar_t, positions(lidar_t), camera_t, positions(camera_t)))
    return drives


__all__ = ["CAMERA_PERIOD_US", "boreas_drives", "checked_poses", "LIDAR_PERIOD_US", "MAX_LATERAL_M", "MIN_LEG_M", "PROCEDURAL_POSES", "ROUTE_CLEARANCE_M",
           "ROUTE_EXTRA_M", "START_EASTING_NORTHING", "is_procedural", "procedural_drives",
           "procedural_route", "route_clearance"]
