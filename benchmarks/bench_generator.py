"""Throughput of the procedural generator (distilvpr_lib.data.synth) at a profile's settings.

Prints, for the camera and the LiDAR separately, frames per second in one process and with
``--workers`` processes (the generator's parallelism on the 2-core machine), then (unless
``--skip-full``) the wall time of a complete generation of the profile into a temporary folder.
A LiDAR *frame* is one 360° sweep; a submap is ``lidar_poses_per_submap`` sweeps plus assembly
(consecutive submaps share sweeps, so the generator needs fewer sweeps than this suggests).

``lidar_submaps_in_order`` renders consecutive submaps of one run with one sweep cache, as a generator
job does (SUBMAPS_PER_JOB submaps a job): its per-submap cost is what a generation pays per submap.

``--ab NAME=CHECKOUT`` (twice or more) compares the generator code of other checkouts (e.g. ``git archive
<commit> | tar -x -C /tmp/base``), interleaved: each round runs this script once per checkout, in turn,
in a fresh process with ``PYTHONPATH`` set to it (one process, no full generation), and the table gives
the median per-frame milliseconds of each and their ratio to the first. Compare figures within one
invocation only: the machine is shared.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generator.py                # cpu profile
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generator.py --profile smoke --skip-full
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_generator.py --profile study \
        --ab before=/tmp/base --ab now=. --rounds 3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
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


def _in_order(renderer, n: int) -> list[list[tuple[int, int, float, list[float]]]]:
    """Jobs of consecutive submaps (run, timestamp, centre s, scan s) from the middle of the first run,
    ``SUBMAPS_PER_JOB`` a job, about ``n`` in all."""
    from distilvpr_lib.data.synth.oxford import SUBMAPS_PER_JOB

    run = renderer.plan.runs[_RUNS[0]]
    first = max(0, len(run.submaps) // 2 - n // 2)
    subs = [(run.index, sp.timestamp, sp.centre_s, sp.scan_s) for sp in run.submaps[first:first + n]]
    return [subs[i:i + SUBMAPS_PER_JOB] for i in range(0, len(subs), SUBMAPS_PER_JOB)]


def _submap_job(job) -> float:
    """Seconds per submap of one job of consecutive submaps sharing a sweep cache."""
    cache: dict = {}
    t = time.perf_counter()
    for run, ts, centre, scan_s in job:
        _RENDERER.submap(run, ts, centre, scan_s, cache)
    return (time.perf_counter() - t) / len(job)


def _ab(args: argparse.Namespace) -> None:
    """Interleaved rounds of this script (one process, --skip-full) for each ``NAME=CHECKOUT``."""
    pairs = []
    for item in args.ab:
        name, _, path = item.partition("=")
        if not name or not path or not (Path(path) / "distilvpr_lib").is_dir():
            print(f"bench_generator: --ab {item!r}: expected NAME=CHECKOUT with a distilvpr_lib/ folder", file=sys.stderr)
            sys.exit(2)
        pairs.append((name, str(Path(path).resolve())))
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _ in pairs}
    here = Path(__file__).resolve()
    with tempfile.TemporaryDirectory(prefix="bench_gen_ab_") as tmp:
        for r in range(args.rounds):
            for name, path in pairs:
                out = Path(tmp) / f"{name}-{r}.json"
                env = dict(os.environ, PYTHONPATH=path)
                cmd = [sys.executable, str(here), "--profile", args.profile, "--frames", str(args.frames),
                       "--workers", "1", "--skip-full", "--json", str(out)]
                if args.only:
                    cmd += ["--only", args.only]
                subprocess.run(cmd, env=env, check=True, cwd=tmp)
                runs[name].append(json.loads(out.read_text()))
    keys = [k for k in runs[pairs[0][0]][0] if k.endswith("_ms_each")]  # wall and CPU (``_cpu_ms_each``)
    loads = [x[k] for v in runs.values() for x in v for k in ("load_average_start", "load_average_end")]
    print(f"\n{args.profile} profile, {args.rounds} interleaved rounds, {args.frames} frames each; medians "
          f"(min–max) in ms per frame, one process; load average {min(loads):.1f}–{max(loads):.1f}")
    print("| measurement | " + " | ".join(name for name, _ in pairs) + " | " +
          " | ".join(f"{name} / {pairs[0][0]}" for name, _ in pairs[1:]) + " |")
    print("|---|" + "---:|" * (2 * len(pairs) - 1))
    for k in keys:
        med = [statistics.median(x[k] for x in runs[name]) for name, _ in pairs]
        spread = [f"{statistics.median(x[k] for x in runs[name]):.1f} ({min(x[k] for x in runs[name]):.1f}–"
                  f"{max(x[k] for x in runs[name]):.1f})" for name, _ in pairs]
        print(f"| {k.removesuffix('_ms_each')} | " + " | ".join(spread) + " | " +
              " | ".join(f"{m / med[0]:.3f}" for m in med[1:]) + " |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(runs, indent=2))


_CPU_S = [0.0]


def _rate(fn, items, workers: int, profile: str) -> tuple[float, float]:
    """(frames per second of wall time, mean seconds per frame inside a worker); in one process,
    ``_CPU_S[0]`` gets the process CPU seconds per frame (less sensitive to other jobs on the machine)."""
    if workers <= 1:
        fn(items[0])  # warm up
        start = time.perf_counter()
        cpu = time.process_time()
        per = [fn(it) for it in items]
        _CPU_S[0] = (time.process_time() - cpu) / len(items)
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
    parser.add_argument("--profile", default="cpu", choices=("smoke", "cpu", "study", "paper"))
    parser.add_argument("--frames", type=int, default=60, help="frames timed per measurement")
    parser.add_argument("--workers", type=int, default=2, help="processes for the parallel measurement")
    parser.add_argument("--skip-full", action="store_true", help="do not time a complete generation")
    parser.add_argument("--keep", default=None, help="generate the full dataset here (kept) instead of a temp dir")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    parser.add_argument("--only", default=None,
                        help="comma-separated measurements to run (camera_frames, lidar_sweeps, "
                             "lidar_submaps_uncached, lidar_submaps_in_order); default: all")
    parser.add_argument("--ab", action="append", default=[], metavar="NAME=CHECKOUT",
                        help="compare the generator code of checkouts, interleaved (see above); twice or more")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --ab")
    args = parser.parse_args()
    if args.ab:
        if len(args.ab) < 2:
            print("bench_generator: --ab needs at least two NAME=CHECKOUT", file=sys.stderr)
            sys.exit(2)
        _ab(args)
        return

    from distilvpr_lib.config import profile_config

    cfg = profile_config(args.profile).synth
    _init(args.profile)
    items = _items(_RENDERER, args.frames)
    print(f"profile {args.profile}: camera {cfg.image_width}x{cfg.image_height}, LiDAR {cfg.lidar_beams} beams x "
          f"{cfg.lidar_azimuth_steps} azimuths ({cfg.lidar_beams * cfg.lidar_azimuth_steps} rays), "
          f"{cfg.lidar_poses_per_submap} sweeps per submap; cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}")
    results: dict[str, float] = {"load_average_start": os.getloadavg()[0]}
    wanted = set(args.only.split(",")) if args.only else None
    jobs = _in_order(_RENDERER, args.frames)
    for name, fn, work in (("camera_frames", _camera, items), ("lidar_sweeps", _lidar, items),
                           ("lidar_submaps_uncached", _submap, items), ("lidar_submaps_in_order", _submap_job, jobs)):
        if wanted is not None and name not in wanted:
            continue
        if name == "lidar_submaps_in_order":  # each item is a job; its figure is per submap
            fn(work[0])  # warm up
            cpu = time.process_time()
            per_job = [fn(job) for job in work]
            n_sub = sum(len(j) for j in work)
            results[f"{name}_cpu_ms_each"] = (time.process_time() - cpu) / n_sub * 1000
            per = sum(p * len(j) for p, j in zip(per_job, work)) / n_sub
            results[f"{name}_ms_each"] = per * 1000
            print(f"{name:24s} {per * 1000:7.1f} ms each, CPU {results[f'{name}_cpu_ms_each']:.1f} ms "
                  f"(one process, {len(work)} jobs of consecutive submaps)")
            continue
        single, per = _rate(fn, work, 1, args.profile)
        results[f"{name}_cpu_ms_each"] = _CPU_S[0] * 1000
        multi, _ = _rate(fn, work, args.workers, args.profile) if args.workers > 1 else (single, per)
        results[f"{name}_per_s_1_process"] = single
        results[f"{name}_per_s_{args.workers}_processes"] = multi
        results[f"{name}_ms_each"] = per * 1000
        print(f"{name:24s} {per * 1000:7.1f} ms each (CPU {_CPU_S[0] * 1000:.1f}) | {single:6.1f} /s in 1 process | "
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
    results["load_average_end"] = os.getloadavg()[0]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
