"""Throughput of the procedural generator (distilvpr_lib.data.synth) at a profile's settings.

Prints, for the camera and the LiDAR separately, frames per second in one process and with
``--workers`` processes (the generator's parallelism on the 2-core machine), then (unless
``--skip-full``) the wall time of a complete generation of the profile into a temporary folder.
A LiDAR *frame* is one 360° sweep; a submap is ``lidar_poses_per_submap`` sweeps plus assembly
(consecutive submaps share sweeps, so the generator needs fewer sweeps than this suggests).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generator.py                # cpu profile
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generator.py --profile smoke --skip-full
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from pathlib import Path

_RENDERER = None


#: Runs the timed frames come from (their primitives are built before timing, as a generator
#: worker builds each run's once).
_RUNS = (0, 1)


def _init(profile: str) -> None:
    global _RENDERER
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.synth import SynthRenderer

    _RENDERER = SynthRenderer(profile_config(profile).synth)
    for run in _RUNS:
        _RENDERER.prepare_run(run)


def _items(renderer, n: int) -> list[tuple[int, int, float, int, float, list[float]]]:
    """n (run, image ts, image s, lidar ts, centre s, scan s) spread over two runs and the route."""
    out = []
    runs = [renderer.plan.runs[i] for i in _RUNS]
    for k in range(n):
        run = runs[k % len(runs)]
        sp = run.submaps[(k * 7919) % len(run.submaps)]
        out.append((run.index, sp.image_timestamps[0], sp.image_s[0], sp.timestamp, sp.centre_s, sp.scan_s))
    return sorted(out)  # grouped by run, as the generator's jobs are


def _camera(item) -> float:
    t = time.perf_counter()
    _RENDERER.image(item[0], item[1], item[2])
    return time.perf_counter() - t


def _lidar(item) -> float:
    t = time.perf_counter()
    _RENDERER.scan(item[0], item[5][0])
    return time.perf_counter() - t


def _submap(item) -> float:
    t = time.perf_counter()
    _RENDERER.submap(item[0], item[3], item[4], item[5])
    return time.perf_counter() - t


def _rate(fn, items, workers: int, profile: str) -> tuple[float, float]:
    """(frames per second of wall time, mean seconds per frame inside a worker)."""
    if workers <= 1:
        fn(items[0])  # warm up
        start = time.perf_counter()
        per = [fn(it) for it in items]
        wall = time.perf_counter() - start
    else:
        ctx = mp.get_context("fork")
        with ctx.Pool(workers, initializer=_init, initargs=(profile,)) as pool:
            pool.map(fn, items[:workers])  # warm up every worker
            start = time.perf_counter()
            per = pool.map(fn, items, chunksize=4)
            wall = time.perf_counter() - start
    return len(items) / wall, sum(per) / len(per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "paper"))
    parser.add_argument("--frames", type=int, default=60, help="frames timed per measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel measurement")
    parser.add_argument("--skip-full", action="store_true", help="do not time a complete generation")
    parser.add_argument("--keep", default=None, help="generate the full dataset here (kept) instead of a temp dir")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()

    from distilvpr_lib.config import profile_config

    cfg = profile_config(args.profile).synth
    _init(args.profile)
    items = _items(_RENDERER, args.frames)
    print(f"profile {args.profile}: camera {cfg.image_width}x{cfg.image_height}, LiDAR {cfg.lidar_beams} beams x "
          f"{cfg.lidar_azimuth_steps} azimuths ({cfg.lidar_beams * cfg.lidar_azimuth_steps} rays), "
          f"{cfg.lidar_poses_per_submap} sweeps per submap; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results: dict[str, float] = {}
    for name, fn in (("camera_frames", _camera), ("lidar_sweeps", _lidar), ("lidar_submaps_uncached", _submap)):
        single, per = _rate(fn, items, 1, args.profile)
        multi, _ = _rate(fn, items, args.workers, args.profile) if args.workers > 1 else (single, per)
        results[f"{name}_per_s_1_process"] = single
        results[f"{name}_per_s_{args.workers}_processes"] = multi
        results[f"{name}_ms_each"] = per * 1000
        print(f"{name:24s} {per * 1000:7.1f} ms each | {single:6.1f} /s in 1 process | "
              f"{multi:6.1f} /s with {args.workers} processes")
    if not args.skip_full:
        from distilvpr_lib.data.synth import generate_dataset

        out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_synth_")) / args.profile
        try:
            cfg.workers = args.workers
            start = time.perf_counter()
            report = generate_dataset(out, cfg, progress=False)
            wall = time.perf_counter() - start
        finally:
            if not args.keep:
                shutil.rmtree(out.parent, ignore_errors=True)
        results.update(full_generation_s=wall, clouds=report.clouds_total, images=report.images_total,
                       worker_lidar_s=report.lidar_seconds, worker_camera_s=report.camera_seconds)
        print(f"full {args.profile} generation with {args.workers} processes: {wall:.1f} s wall "
              f"({report.clouds_total} clouds, {report.images_total} images; worker time LiDAR "
              f"{report.lidar_seconds:.1f} s, camera {report.camera_seconds:.1f} s); "
              f"load average {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
