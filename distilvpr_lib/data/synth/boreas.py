"""Boreas layout: the generator driven along procedural or real Boreas trajectories (docs/METHOD.md §2.2).

The drives are ``synth.n_runs`` procedural drives of one generated route (the default, from the seed
alone: :mod:`.boreas_route`, docs/DATA.md) or the real drives of a ``boreas_poses/`` folder. The world is
built around the first drive (a suburban arterial road along the driven path: detached houses and low
commercial blocks turned to face the road, front yards, boulevard trees, lamps), and every run follows
one of the drives (with its LiDAR and camera timestamps, shifted to the run's date) under its own
condition. Written layout::

    <run>/lidar_1_4096_interval10/<ts>.npy            (4096, 3) float32, metric, LiDAR frame, ground removed
    <run>/camera_lidar_interval10/<image_ts>.png       forward camera
    <run>/P0_camera_interval10/<ts>.txt                3x4 camera projection matrix
    <run>/T_camera_lidar_basedon_pose_interval10/<ts>.txt   4x4 LiDAR-to-camera transform
    <run>/lidar_locations_interval10.csv               timestamp,northing,easting (UTM zone 17)
    boreas_training_queries_baseline.pickle, boreas_evaluation_{database,query}.pickle,
    boreas_validation_evaluation_{database,query}.pickle, boreas_lidar2image_ndx.pickle,
    boreas_squares.json, synth_config.json, synth_manifest.json, synth_complete.json

Run names are ``boreas-YYYY-MM-DD-HH-MM`` (23 characters). The Boreas benchmark's own split is
not published (docs/METHOD.md §2.2); here test squares of half-width 150 m are placed along the route
so that about ``test_fraction`` of the submaps are queries, with the Oxford radii (10/50/25 m)
and a validation square chosen as in :mod:`distilvpr_lib.data.splits`.
"""


from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import (
    NON_NEGATIVE_RADIUS_M,
    OXFORD_TEST_SQUARE_HALF_WIDTH_M,
    DataConfig,
    Layout,
    SynthConfig,
)
from distilvpr_lib.data.clouds import write_npy_cloud
from distilvpr_lib.data.files import PathLike, atomic_write
from distilvpr_lib.data.locations import write_locations_csv
from distilvpr_lib.data.pickles import save_pickle
from distilvpr_lib.data.splits import (
    BOREAS_CLOUD_FOLDER,
    BOREAS_IMAGE_FOLDER,
    BOREAS_LIDAR2IMAGE_PICKLE,
    BOREAS_LOCATIONS_CSV,
    BOREAS_P0_FOLDER,
    BOREAS_SQUARES_JSON,
    BOREAS_T_CAMERA_LIDAR_FOLDER,
    BOREAS_TEST_DATABASE_PICKLE,
    BOREAS_TEST_QUERY_PICKLE,
    BOREAS_TRAINING_PICKLE,
    BOREAS_VALIDATION_DATABASE_PICKLE,
    BOREAS_VALIDATION_QUERY_PICKLE,
    RunLocations,
    choose_validation_squares,
    distance_to_squares,
    in_squares,
    make_evaluation_sets,
    make_training_tuples,
    write_lidar2image_ndx,
)
from distilvpr_lib.data.synth.boreas_route import PROCEDURAL_POSES, boreas_drives, checked_poses, is_procedural
from distilvpr_lib.data.synth.boreas_world import DriveTrack, boreas_transients, build_road_world
from distilvpr_lib.data.synth.camera import CAMERA_HEIGHT_M, CAMERA_PITCH_DEG, CameraModel, render_image
from distilvpr_lib.data.synth.conditions import RunCondition, sample_conditions, start_time_us
from distilvpr_lib.data.synth.lidar import (
    GROUND_REMOVAL_Z_M,
    LIDAR_HEIGHT_M,
    make_lidar_model,
    sample_to_count,
    scan,
    voxel_downsample,
)
from distilvpr_lib.data.synth.skeleton import (
    GENERATOR_VERSION,
    GenerationReport,
    JobResult,
    LayoutWriter,
    Progress,
    encode_png,
    run_generation,
)
from distilvpr_lib.data.synth.world import Primitives, World, apply_season

#: Submap spacing along each drive (m) and horizontal range of a submap (m).
SUBMAP_SPACING_M = 10.0
CLOUD_RANGE_M = 50.0
CLOUD_VOXEL_M = 0.2
_TAG_BOREAS_TRANSIENTS, _TAG_BOREAS_SCAN, _TAG_BOREAS_SAMPLE, _TAG_BOREAS_FRAME = 701, 702, 703, 704
_TAG_BOREAS_JITTER = 705


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
    """World around the first drive, and every run's submaps and images (nothing rendered).

    ``poses_dir``: a folder of real Boreas poses, or ``None`` / ``"procedural"`` (:func:`.boreas_route.boreas_drives`).
    """
    seed = cfg.seed if seed is None else int(seed)
    drives = boreas_drives(poses_dir, seed, cfg.n_runs, cfg.route_length_m)
    origin = np.round(drives[0].lidar_en[0] / 100.0) * 100.0
    tracks = [DriveTrack.create(d, origin) for d in drives]
    world = build_road_world(seed, tracks[0], cfg.route_length_m)
    if is_procedural(poses_dir):
        world.summary["trajectories"] = PROCEDURAL_POSES
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


def _boreas_job(job: tuple[int, list[int], str]) -> JobResult:
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
        for folder, text in ((BOREAS_P0_FOLDER, p0_text), (BOREAS_T_CAMERA_LIDAR_FOLDER, t_text)):
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
    return JobResult(clouds, images, lidar_s, camera_s, len(submap_ids))


def _init_boreas_worker(cfg_dict: dict[str, Any], poses_dir: PathLike, seed: int) -> None:
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
    # Boreas evaluation reuses the database embeddings as queries (docs/METHOD.md §6), so every query set lists
    # exactly its database entries, index for index; entries that are not queries get empty neighbour lists.
    everything = [np.ones(len(loc.rel_paths), bool) for loc in eval_locs]
    test_db, test_q = make_evaluation_sets(eval_locs, everything)
    _keep_neighbours_only_for(test_q, [in_squares(loc.positions, squares) for loc in eval_locs])
    outside = [~in_squares(loc.positions, squares) for loc in eval_locs]
    val_db, val_q = make_evaluation_sets(eval_locs, outside, database_masks=outside)
    _keep_neighbours_only_for(val_q, [in_squares(loc.positions[o], validation) for loc, o in zip(eval_locs, outside)])
    for name, obj in ((BOREAS_TRAINING_PICKLE, tuples), (BOREAS_TEST_DATABASE_PICKLE, test_db), (BOREAS_TEST_QUERY_PICKLE, test_q),
                      (BOREAS_VALIDATION_DATABASE_PICKLE, val_db), (BOREAS_VALIDATION_QUERY_PICKLE, val_q)):
        save_pickle(out / name, obj)
    info = {"test_squares": [list(s) for s in squares], "validation_squares": [list(v) for v in validation],
            "train_runs": [loc.run for loc in train], "eval_runs": eval_names}
    with atomic_write(out / BOREAS_SQUARES_JSON, "w") as f:
        json.dump(info, f, indent=2)
    return {"training_tuples": len(tuples), "test_query": _count_queries(test_q),
            "validation_query": _count_queries(val_q), "test_squares": squares, "validation_squares": validation}


def _count_queries(query_sets: list[dict[int, dict[Any, Any]]]) -> list[int]:
    """Per run, the entries that have a true neighbour in some other run (the evaluated queries)."""
    return [sum(any(len(v) for k, v in e.items() if isinstance(k, int)) for e in q.values()) for q in query_sets]


# ---------------------------------------------------------------------------
# The layout's parts of the generation skeleton
# ---------------------------------------------------------------------------
class BoreasWriter(LayoutWriter):
    """The Boreas layout for :func:`~.skeleton.run_generation`.

    Args:
        poses_dir: a folder of real Boreas poses (e.g. :func:`.boreas_world.default_boreas_poses_dir`; checked
            here, before anything is written: ``FileNotFoundError``), or ``None`` / ``"procedural"`` (default).
    """

    layout = Layout.BOREAS.value
    progress_desc = "synth {name} (boreas)"
    progress_unit = "submap"
    ordered_results = True

    def __init__(self, poses_dir: PathLike | None = None) -> None:
        self.procedural = is_procedural(poses_dir)
        self.poses: str | Path = PROCEDURAL_POSES if self.procedural else checked_poses(poses_dir)  # type: ignore[arg-type]

    def record_extra(self) -> dict[str, Any]:
        # the real-poses record is the one from before procedural drives; neither completes the other's folder
        return {"boreas_trajectories": PROCEDURAL_POSES} if self.procedural else {}

    def plan(self, cfg: SynthConfig, seed: int) -> BoreasPlan:
        return plan_boreas(cfg, self.poses, seed)

    def manifest(self, plan: BoreasPlan) -> dict[str, Any]:
        return {"generator_version": GENERATOR_VERSION, "seed": plan.seed, "layout": self.layout,
                "world": plan.world.summary,
                "runs": [{**r.condition.to_dict(), "name": r.name, "oxford_style_name": r.condition.name,
                          "index": r.index, "source_drive": plan.tracks[r.drive_index].drive.name,
                          "time_shift_us": r.time_shift_us} for r in plan.runs],
                "eval_runs": plan.eval_runs()}

    def write_locations(self, plan: BoreasPlan, out: Path) -> None:
        for run in plan.runs:
            write_locations_csv(out / run.name / BOREAS_LOCATIONS_CSV, [sp.timestamp for sp in run.submaps],
                                [sp.northing for sp in run.submaps], [sp.easting for sp in run.submaps])

    def jobs(self, plan: BoreasPlan, out: Path) -> tuple[list[tuple[int, list[int], str]], int]:
        jobs = []
        total = 0
        for pos, run in enumerate(plan.runs):
            todo = []
            for i, sp in enumerate(run.submaps):
                missing = not (out / run.name / BOREAS_CLOUD_FOLDER / f"{sp.timestamp}.npy").is_file()
                missing |= any(not (out / run.name / BOREAS_IMAGE_FOLDER / f"{t}.png").is_file()
                               for t in sp.image_timestamps)
                missing |= any(not (out / run.name / f / f"{sp.timestamp}.txt").is_file()
                               for f in (BOREAS_P0_FOLDER, BOREAS_T_CAMERA_LIDAR_FOLDER))
                if missing:
                    todo.append(i)
            for chunk in range(0, len(todo), 12):
                part = todo[chunk:chunk + 12]
                jobs.append((pos, part, str(out)))
                total += len(part)
        return jobs, total

    def run_job(self) -> Any:
        return _boreas_job

    @contextlib.contextmanager
    def in_process(self, plan: BoreasPlan) -> Iterator[None]:
        global _BSTATE
        previous = _BSTATE
        _BSTATE = _make_state(plan)
        try:
            yield
        finally:
            _BSTATE = previous

    def pool_initializer(self, cfg: SynthConfig, seed: int) -> tuple[Any, tuple[Any, ...]]:
        return _init_boreas_worker, (dataclasses.asdict(cfg), self.poses, seed)

    def finish(self, plan: BoreasPlan, out: Path, report: GenerationReport) -> None:
        ndx = {sp.timestamp: list(sp.image_timestamps) for r in plan.runs for sp in r.submaps}
        write_lidar2image_ndx(out / BOREAS_LIDAR2IMAGE_PICKLE, dict(sorted(ndx.items())))
        report.splits_summary = build_boreas_benchmark(out, plan)


def generate_boreas_dataset(out_dir: PathLike, cfg: SynthConfig, seed: int | None = None, workers: int | None = None,
                            progress: Progress = True, poses_dir: PathLike | None = None) -> GenerationReport:
    """Generate (or complete) a Boreas-layout dataset in ``out_dir`` (``poses_dir``: see :class:`BoreasWriter`)."""
    return run_generation(BoreasWriter(poses_dir), out_dir, cfg, seed=seed, workers=workers, progress=progress)


__all__ = [
    "BoreasPlan", "BoreasRun", "BoreasSubmap", "BoreasWriter", "build_boreas_benchmark", "calibration_texts", "choose_test_squares",
    "generate_boreas_dataset", "plan_boreas", "render_boreas_cloud", "render_boreas_image",
]
