"""The Oxford layout: a procedural loop around the PointNetVLAD test squares (docs/METHOD.md §2.1).

Written under ``out_dir`` by :class:`OxfordWriter` through :func:`~.skeleton.run_generation`::

    oxford/<run>/pointcloud_20m_10overlap/<ts>.bin     training submaps, about every 10 m
    oxford/<run>/pointcloud_locations_20m_10overlap.csv
    oxford/<run>/pointcloud_20m/<ts>.bin               evaluation submaps, about every 20 m
    oxford/<run>/pointcloud_locations_20m.csv
    images/<run>/<image_ts>.png                         forward camera, nearest images of each submap
    images/lidar2image_ndx.pickle                       {lidar_ts: [image_ts, ...] nearest first}
    training_queries_baseline.pickle, oxford_evaluation_{database,query}.pickle,
    validation_evaluation_{database,query}.pickle, validation_squares.json   (data.splits)
    synth_config.json      the settings (a restart must use the same ones)
    synth_manifest.json    world summary and every run's condition
    synth_complete.json    completion marker, written last

Every random draw uses a generator seeded from the seed and the file's identity (run, timestamp).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import Layout, SynthConfig
from distilvpr_lib.data.clouds import write_bin
from distilvpr_lib.data.files import atomic_write
from distilvpr_lib.data.locations import write_locations_csv
from distilvpr_lib.data.splits import (
    EVALUATION_CLOUD_FOLDER,
    EVALUATION_LOCATIONS_CSV,
    LIDAR2IMAGE_PICKLE,
    OXFORD_RUNS_FOLDER,
    TRAINING_CLOUD_FOLDER,
    TRAINING_LOCATIONS_CSV,
    build_oxford_benchmark,
    write_lidar2image_ndx,
)
from distilvpr_lib.data.synth.camera import CameraModel, render_image
from distilvpr_lib.data.synth.conditions import RunCondition, sample_conditions
from distilvpr_lib.data.synth.lidar import LidarModel, make_lidar_model, make_submap, scan, window_points
from distilvpr_lib.data.synth.skeleton import (
    GENERATOR_VERSION,
    GenerationReport,
    JobResult,
    LayoutWriter,
    encode_png,
)
from distilvpr_lib.data.synth.trajectory import Trajectory
from distilvpr_lib.data.synth.world import Primitives, World, apply_season, build_transients, build_world

IMAGES_FOLDER = "images"
#: Camera frame rate (Hz) of the image timestamps (the RobotCar stereo camera runs at 16 Hz).
CAMERA_RATE_HZ = 16.0
#: Length of a submap window (m) and spacing of training / evaluation submaps (m).
WINDOW_M = 20.0
TRAINING_SPACING_M = 10.0
EVALUATION_SPACING_M = 20.0
#: Submaps rendered per job (consecutive along a run, so scans are shared inside a job).
SUBMAPS_PER_JOB = 12
#: Runs whose primitives a worker keeps in memory.
_RUN_CACHE = 4

_TAG_RUN_TRAJECTORY, _TAG_TRANSIENTS, _TAG_SCAN, _TAG_SUBMAP, _TAG_FRAME = 200, 500, 300, 400, 600


def _seed_u32(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFFFFFFFFFF for k in keys]).generate_state(1)[0])


# ---------------------------------------------------------------------------
# Plan
# ---------------------------------------------------------------------------
@dataclass
class SubmapPlan:
    """One submap to write: ``kind`` is ``"train"`` (every ~10 m) or ``"eval"`` (every ~20 m)."""

    kind: str
    timestamp: int
    centre_s: float
    northing: float
    easting: float
    scan_s: list[float]
    image_timestamps: list[int]
    image_s: list[float]


@dataclass
class RunPlan:
    """Everything to write for one run."""

    index: int
    condition: RunCondition
    trajectory: Trajectory
    submaps: list[SubmapPlan]

    @property
    def name(self) -> str:
        return self.condition.name


@dataclass
class DatasetPlan:
    """The world and the runs of one generation."""

    seed: int
    cfg: SynthConfig
    world: World
    runs: list[RunPlan]

    def eval_runs(self) -> list[str]:
        """Runs of the evaluation sets: ``cfg.n_eval_runs`` evenly spread over the sorted runs (default all)."""
        names = [r.name for r in self.runs]
        n = self.cfg.n_eval_runs
        if n is None or n >= len(names):
            return names
        if n < 2:
            raise ValueError(f"n_eval_runs must be at least 2 (got {n})")
        picks = np.unique(np.round(np.linspace(0, len(names) - 1, n)).astype(int))
        return [names[i] for i in picks]


def _scan_offsets(poses: int) -> np.ndarray:
    spacing = WINDOW_M / poses
    return (np.arange(poses) - (poses - 1) / 2) * spacing


def _eval_offset(poses: int) -> float:
    """Offset of the evaluation centres from the training ones, so their scans coincide when possible."""
    spacing = WINDOW_M / poses
    if spacing < TRAINING_SPACING_M and abs(TRAINING_SPACING_M / spacing - round(TRAINING_SPACING_M / spacing)) < 1e-9:
        return spacing
    return TRAINING_SPACING_M / 2


def plan_dataset(cfg: SynthConfig, seed: int | None = None) -> DatasetPlan:
    """Build the world and plan every run's submaps and images (no rendering).

    Args:
        cfg: generator settings.
        seed: overrides ``cfg.seed``.
    """
    seed = cfg.seed if seed is None else int(seed)
    if cfg.n_runs < 2:
        raise ValueError(f"n_runs must be at least 2 (got {cfg.n_runs})")
    if cfg.images_per_submap < 1:
        raise ValueError(f"images_per_submap must be at least 1 (got {cfg.images_per_submap})")
    world = build_world(seed, cfg.route_length_m, test_fraction=cfg.test_fraction)
    conditions = sample_conditions(seed, cfg.n_runs)
    runs = []
    offsets = _scan_offsets(cfg.lidar_poses_per_submap)
    eval_offset = _eval_offset(cfg.lidar_poses_per_submap)
    length = world.route.length
    for index, cond in enumerate(conditions):
        traj = Trajectory.create(world.route, cond, np.random.default_rng(np.random.SeedSequence([seed, _TAG_RUN_TRAJECTORY, index])))
        submaps: list[SubmapPlan] = []
        for kind, first, spacing in (("train", cond.submap_phase_m, TRAINING_SPACING_M),
                                     ("eval", cond.submap_phase_m + eval_offset, EVALUATION_SPACING_M)):
            centres = np.arange(first, cond.submap_phase_m + length - 1e-6, spacing)
            times = traj.time_at(centres)
            xy, _ = traj.pose(centres)
            north, east = world.local_to_utm(xy)
            stamps = cond.start_time_us + np.round(times * 1e6).astype(np.int64)
            for c, t_s, ts, n, e in zip(centres.tolist(), times.tolist(), stamps.tolist(), north.tolist(), east.tolist()):
                image_times = _nearest_camera_times(t_s, cond.camera_phase_s, cfg.images_per_submap)
                image_ts = [int(cond.start_time_us + round(x * 1e6)) for x in image_times]
                image_s = [float(v) for v in traj.arc_at(np.asarray(image_times))]
                scan_s = [round(c + o, 2) for o in offsets.tolist()]
                submaps.append(SubmapPlan(kind, int(ts), float(c), float(n), float(e), scan_s, image_ts, image_s))
        submaps.sort(key=lambda p: (p.centre_s, p.kind))
        runs.append(RunPlan(index, cond, traj, submaps))
    return DatasetPlan(seed, cfg, world, runs)


def _nearest_camera_times(t: float, phase: float, k: int) -> list[float]:
    """The ``k`` camera frame times nearest ``t`` (frames at ``phase + j / rate``), nearest first."""
    j0 = int(round((t - phase) * CAMERA_RATE_HZ))
    cands = [phase + j / CAMERA_RATE_HZ for j in range(max(j0 - k - 1, 0), j0 + k + 2)]
    cands.sort(key=lambda x: (abs(x - t), x))
    return cands[:k]


# ---------------------------------------------------------------------------
# Rendering (runs in worker processes)
# ---------------------------------------------------------------------------
@dataclass
class _WorkerState:
    seed: int
    cfg: SynthConfig
    world: World
    camera: CameraModel
    lidar: LidarModel
    run_prims: dict[int, Primitives] = field(default_factory=dict)
    trajectories: dict[int, Trajectory] = field(default_factory=dict)
    conditions: list[RunCondition] = field(default_factory=list)


_STATE: _WorkerState | None = None


def _make_state(seed: int, cfg: SynthConfig, plan: DatasetPlan | None = None) -> _WorkerState:
    plan = plan_dataset(cfg, seed) if plan is None else plan
    camera = CameraModel.create(cfg.image_width, cfg.image_height, cfg.camera_hfov_deg)
    lidar = make_lidar_model(cfg)
    state = _WorkerState(seed, cfg, plan.world, camera, lidar)
    state.conditions = [r.condition for r in plan.runs]
    state.trajectories = {r.index: r.trajectory for r in plan.runs}
    return state


def run_primitives(world: World, cond: RunCondition, seed: int, run_index: int) -> Primitives:
    """Static world + the run's parked cars, pedestrians and barriers, with its season's foliage."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _TAG_TRANSIENTS, run_index]))
    transients = build_transients(world, rng, cond.parked_fraction, cond.pedestrian_count, cond.barrier_count)
    return apply_season(world.prims.concat(transients), cond.crown_scale, cond.foliage_porosity, cond.leaf_color)


def _init_worker(seed: int, cfg_dict: dict[str, Any]) -> None:
    global _STATE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _STATE = _make_state(seed, SynthConfig(**cfg_dict))


def _state_prims(state: _WorkerState, run_index: int) -> Primitives:
    if run_index not in state.run_prims:
        while len(state.run_prims) >= _RUN_CACHE:  # a few runs at a time keeps memory flat
            state.run_prims.pop(next(iter(state.run_prims)))
        state.run_prims[run_index] = run_primitives(state.world, state.conditions[run_index], state.seed, run_index)
    return state.run_prims[run_index]


@dataclass
class _Job:
    run_index: int
    out_dir: str
    #: (kind, timestamp, centre_s, scan_s) of the submaps to write
    submaps: list[tuple[str, int, float, list[float]]]
    #: (image timestamp, arc length) of the images to write
    images: list[tuple[int, float]]


def render_submap(state: _WorkerState, run_index: int, timestamp: int, centre_s: float, scan_s: list[float],
                  scan_cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The normalised (4096, 3) float64 submap of one window of a run."""
    cond = state.conditions[run_index]
    traj = state.trajectories[run_index]
    prims = _state_prims(state, run_index)
    scans = []
    for s in scan_s:
        key = int(round(s * 100))
        if scan_cache is not None and key in scan_cache:
            scans.append(scan_cache[key])
            continue
        xy, heading = traj.pose(s)
        rng = np.random.default_rng(np.random.SeedSequence([state.seed, _TAG_SCAN, run_index, key & 0xFFFFFFFF]))
        pts = scan(state.lidar, prims, xy, float(heading), cond.lidar_dropout, cond.lidar_range_noise, rng,
                   _seed_u32(state.seed, _TAG_SCAN, run_index, key))
        if scan_cache is not None:
            scan_cache[key] = pts
        scans.append(pts)
    xy, heading = traj.pose(centre_s)
    window = window_points(scans, xy, float(heading), state.lidar)
    rng = np.random.default_rng(np.random.SeedSequence([state.seed, _TAG_SUBMAP, run_index, timestamp]))
    return make_submap(window, state.lidar, rng)


def render_frame(state: _WorkerState, run_index: int, timestamp: int, s: float) -> np.ndarray:
    """The (H, W, 3) uint8 camera image of a run at arc length ``s`` (timestamp seeds its noise)."""
    cond = state.conditions[run_index]
    traj = state.trajectories[run_index]
    prims = _state_prims(state, run_index)
    xy, heading = traj.pose(s)
    key = _seed_u32(state.seed, _TAG_FRAME, run_index, timestamp)
    return render_image(state.world, prims, cond, state.camera, xy, float(heading), key,
                        shadows=state.cfg.camera_shadows)


class SynthRenderer:
    """Render single frames and submaps of a planned dataset (benchmarks, notebooks, tests).

    Example::

        renderer = SynthRenderer(profile_config("cpu").synth)
        run = renderer.plan.runs[0]
        sp = run.submaps[0]
        image = renderer.image(run.index, sp.image_timestamps[0], sp.image_s[0])   # (H, W, 3) uint8
        cloud = renderer.submap(run.index, sp.timestamp, sp.centre_s, sp.scan_s)    # (4096, 3) float64
    """

    def __init__(self, cfg: SynthConfig, seed: int | None = None) -> None:
        seed = cfg.seed if seed is None else int(seed)
        self.plan = plan_dataset(cfg, seed)
        self._state = _make_state(seed, cfg, self.plan)

    def image(self, run_index: int, timestamp: int, s: float) -> np.ndarray:
        """The camera image of run ``run_index`` at arc length ``s`` ((H, W, 3) uint8)."""
        return render_frame(self._state, run_index, timestamp, s)

    def submap(self, run_index: int, timestamp: int, centre_s: float, scan_s: list[float],
               scan_cache: dict[int, np.ndarray] | None = None) -> np.ndarray:
        """The normalised (4096, 3) float64 submap of one window."""
        return render_submap(self._state, run_index, timestamp, centre_s, scan_s, scan_cache)

    def prepare_run(self, run_index: int) -> None:
        """Build and keep run ``run_index``'s primitives (a generator worker builds each run's once; timing
        code calls this first)."""
        _state_prims(self._state, run_index)

    def scan(self, run_index: int, s: float) -> np.ndarray:
        """One LiDAR sweep (M, 3) float64 world points of run ``run_index`` at arc length ``s``."""
        st = self._state
        cond = st.conditions[run_index]
        xy, heading = st.trajectories[run_index].pose(s)
        key = int(round(s * 100))
        rng = np.random.default_rng(np.random.SeedSequence([st.seed, _TAG_SCAN, run_index, key & 0xFFFFFFFF]))
        return scan(st.lidar, _state_prims(st, run_index), xy, float(heading), cond.lidar_dropout,
                    cond.lidar_range_noise, rng, _seed_u32(st.seed, _TAG_SCAN, run_index, key))


def _run_job(job: _Job) -> JobResult:
    """Render and write a job's files; returns (clouds, images, lidar seconds, camera seconds, units)."""
    state = _STATE
    assert state is not None, "worker not initialised"
    out = Path(job.out_dir)
    run = state.conditions[job.run_index].name
    cache: dict[int, np.ndarray] = {}
    t0 = time.perf_counter()
    for kind, ts, centre, scan_s in job.submaps:
        folder = TRAINING_CLOUD_FOLDER if kind == "train" else EVALUATION_CLOUD_FOLDER
        cloud = render_submap(state, job.run_index, ts, centre, scan_s, cache)
        write_bin(out / OXFORD_RUNS_FOLDER / run / folder / f"{ts}.bin", cloud)
    t1 = time.perf_counter()
    for ts, s in job.images:
        image = render_frame(state, job.run_index, ts, s)
        with atomic_write(out / IMAGES_FOLDER / run / f"{ts}.png", "wb") as f:
            f.write(encode_png(image))
    t2 = time.perf_counter()
    return JobResult(len(job.submaps), len(job.images), t1 - t0, t2 - t1, len(job.submaps) + len(job.images))

# ---------------------------------------------------------------------------
# The layout's parts of the generation skeleton
# ---------------------------------------------------------------------------
def _jobs(plan: DatasetPlan, out_dir: Path) -> Iterator[_Job]:
    for run in plan.runs:
        pending_submaps = []
        pending_images: list[tuple[int, float]] = []
        seen_images: set[int] = set()
        for sp in run.submaps:
            folder = TRAINING_CLOUD_FOLDER if sp.kind == "train" else EVALUATION_CLOUD_FOLDER
            if not (out_dir / OXFORD_RUNS_FOLDER / run.name / folder / f"{sp.timestamp}.bin").is_file():
                pending_submaps.append((sp.kind, sp.timestamp, sp.centre_s, sp.scan_s))
            for ts, s in zip(sp.image_timestamps, sp.image_s):
                if ts in seen_images:
                    continue
                seen_images.add(ts)
                if not (out_dir / IMAGES_FOLDER / run.name / f"{ts}.png").is_file():
                    pending_images.append((ts, s))
        # consecutive chunks: a job holds submaps close along the route (shared scans)
        n_chunks = max(math.ceil(len(pending_submaps) / SUBMAPS_PER_JOB), math.ceil(len(pending_images) / (SUBMAPS_PER_JOB * 2)), 1)
        if not pending_submaps and not pending_images:
            continue
        sub_parts = np.array_split(np.arange(len(pending_submaps)), n_chunks)
        img_parts = np.array_split(np.arange(len(pending_images)), n_chunks)
        for a, b in zip(sub_parts, img_parts):
            if len(a) or len(b):
                yield _Job(run.index, str(out_dir), [pending_submaps[i] for i in a], [pending_images[i] for i in b])


class OxfordWriter(LayoutWriter):
    """The Oxford layout for :func:`~.skeleton.run_generation`.

    Args:
        build_pickles: write the benchmark pickles with :func:`data.splits.build_oxford_benchmark`.
    """

    layout = Layout.OXFORD.value
    progress_desc = "synth {name}"
    progress_unit = "file"
    ordered_results = False

    def __init__(self, build_pickles: bool = True) -> None:
        self.build_pickles = build_pickles

    def plan(self, cfg: SynthConfig, seed: int) -> DatasetPlan:
        return plan_dataset(cfg, seed)

    def manifest(self, plan: DatasetPlan) -> dict[str, Any]:
        return {
            "generator_version": GENERATOR_VERSION,
            "seed": plan.seed,
            "world": plan.world.summary,
            "runs": [{**r.condition.to_dict(), "index": r.index, "route_length_m": plan.world.route.length,
                      "duration_s": r.trajectory.duration_s} for r in plan.runs],
            "eval_runs": plan.eval_runs(),
        }

    def write_locations(self, plan: DatasetPlan, out: Path) -> None:
        for run in plan.runs:
            for kind, csv in (("train", TRAINING_LOCATIONS_CSV), ("eval", EVALUATION_LOCATIONS_CSV)):
                items = [sp for sp in run.submaps if sp.kind == kind]
                write_locations_csv(out / OXFORD_RUNS_FOLDER / run.name / csv, [sp.timestamp for sp in items],
                                    [sp.northing for sp in items], [sp.easting for sp in items])

    def jobs(self, plan: DatasetPlan, out: Path) -> tuple[list[_Job], int]:
        jobs = list(_jobs(plan, out))
        return jobs, sum(len(j.submaps) + len(j.images) for j in jobs)

    def run_job(self) -> Any:
        return _run_job

    @contextlib.contextmanager
    def in_process(self, plan: DatasetPlan) -> Iterator[None]:
        global _STATE
        previous = _STATE
        _STATE = _make_state(plan.seed, plan.cfg, plan)
        try:
            yield
        finally:
            _STATE = previous

    def pool_initializer(self, cfg: SynthConfig, seed: int) -> tuple[Any, tuple[Any, ...]]:
        return _init_worker, (seed, dataclasses.asdict(cfg))

    def finish(self, plan: DatasetPlan, out: Path, report: GenerationReport) -> None:
        # LiDAR -> image index over all runs (nearest first)
        ndx = {sp.timestamp: list(sp.image_timestamps) for r in plan.runs for sp in r.submaps}
        write_lidar2image_ndx(out / IMAGES_FOLDER / LIDAR2IMAGE_PICKLE, dict(sorted(ndx.items())))
        if self.build_pickles:
            splits = build_oxford_benchmark(out, eval_runs=plan.eval_runs())
            report.splits_summary = splits.summary()


__all__ = ["DatasetPlan", "OxfordWriter", "RunPlan", "SubmapPlan", "SynthRenderer", "plan_dataset", "render_frame",
           "render_submap", "run_primitives"]
