"""Same-process A/B of the procedural generator: the same frames rendered by two or more checkouts, alternating.

Each ``NAME=CHECKOUT`` is copied to a temporary folder as a package of its own (``distilvpr_lib`` renamed,
imports included), so one process holds every version. For each item (a camera image, a LiDAR sweep, or a job
of consecutive submaps sharing a sweep cache, as the generator renders them) every version renders it in turn
(the order alternates), the outputs are asserted **byte-identical** to the first version's, and the per-item
times give medians and the median of per-item ratios. Images and sweeps are spread over every run of the profile
(their conditions differ: sun shadows, night, rain); the submaps are consecutive ones of the first run. Alternating item by item cancels most of the drift of a
shared machine, which process-interleaved rounds (``bench_generator.py --ab``) do not.

Usage::

    git archive 83474bf | tar -x -C /tmp/base
    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/bench_generator_ab.py before=/tmp/base now=. \\
        --profile study --items 96
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_SUBMAPS_PER_JOB = 12


def _copy_as(checkout: Path, dest: Path, package: str) -> None:
    """``checkout/distilvpr_lib`` copied to ``dest/package`` with every ``distilvpr_lib`` renamed."""
    shutil.copytree(checkout / "distilvpr_lib", dest / package, ignore=shutil.ignore_patterns("__pycache__"))
    for path in (dest / package).rglob("*.py"):
        path.write_text(re.sub(r"\bdistilvpr_lib\b", package, path.read_text()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("versions", nargs="+", metavar="NAME=CHECKOUT", help="two or more; the first is the baseline")
    parser.add_argument("--profile", default="study", choices=("smoke", "cpu", "study", "paper"))
    parser.add_argument("--items", type=int, default=96, help="images, sweeps and consecutive submaps timed")
    parser.add_argument("--only", default="camera,lidar,submaps", help="comma-separated: camera, lidar, submaps")
    args = parser.parse_args()
    pairs = []
    for item in args.versions:
        name, _, path = item.partition("=")
        if not name.isidentifier() or not (Path(path) / "distilvpr_lib").is_dir():
            print(f"bench_generator_ab: {item!r}: expected NAME=CHECKOUT (NAME an identifier, CHECKOUT holding "
                  "distilvpr_lib/)", file=sys.stderr)
            sys.exit(2)
        pairs.append((name, Path(path).resolve()))
    if len(pairs) < 2:
        print("bench_generator_ab: give at least two NAME=CHECKOUT", file=sys.stderr)
        sys.exit(2)
    names = [name for name, _ in pairs]
    with tempfile.TemporaryDirectory(prefix="bench_gen_ab_") as tmp:
        renderers = {}
        for name, path in pairs:
            _copy_as(path, Path(tmp), f"dv_{name}")
        sys.path.insert(0, tmp)
        for name in names:
            config = importlib.import_module(f"dv_{name}.config")
            synth = importlib.import_module(f"dv_{name}.data.synth")
            start = time.perf_counter()
            renderers[name] = synth.SynthRenderer(config.profile_config(args.profile).synth)
            print(f"{name}: world built in {time.perf_counter() - start:.1f} s", flush=True)
        plan = renderers[names[0]].plan
        runs = list(plan.runs)  # every run: their conditions (sun, night, rain ...) cost differently
        items = []
        for k in range(args.items):
            run = runs[k % len(runs)]
            sp = run.submaps[(k * 7919) % len(run.submaps)]
            items.append((run.index, sp.image_timestamps[0], sp.image_s[0], sp.scan_s[0]))
        items.sort()  # grouped by run, as the generator's jobs are (a run's primitives are built once)
        first = max(0, len(runs[0].submaps) // 2 - args.items // 2)
        subs = [(runs[0].index, sp.timestamp, sp.centre_s, sp.scan_s) for sp in runs[0].submaps[first:first + args.items]]
        jobs = [subs[i:i + _SUBMAPS_PER_JOB] for i in range(0, len(subs), _SUBMAPS_PER_JOB)]

        def job(r, jb):
            cache: dict = {}
            return np.stack([r.submap(run, ts, centre, scan_s, cache) for run, ts, centre, scan_s in jb])

        work = {"camera": (lambda r, it: r.image(it[0], it[1], it[2]), items, 1, "image"),
                "lidar": (lambda r, it: r.scan(it[0], it[3]), items, 1, "sweep"),
                "submaps": (job, jobs, None, "submap, in order")}
        load = [os.getloadavg()[0]]
        print(f"\n{args.profile} profile, one thread; per item, every version in turn (order alternating), outputs "
              "asserted byte-identical\n")
        print("| measurement | " + " | ".join(f"{n} ms" for n in names) + " | " +
              " | ".join(f"{n} / {names[0]} (median of per-item ratios)" for n in names[1:]) + " |")
        print("|---|" + "---:|" * (2 * len(names) - 1))
        for what in args.only.split(","):
            fn, its, per, unit = work[what]
            for name in names:
                fn(renderers[name], its[0])  # warm up
            times: dict[str, list[float]] = {name: [] for name in names}
            current_run = None
            for i, it in enumerate(its):
                run = it[0] if what != "submaps" else it[0][0]
                if run != current_run:  # a run's primitives are built once per worker: not timed
                    for name in names:
                        renderers[name].prepare_run(run)
                    current_run = run
                out = {}
                for name in (names if i % 2 == 0 else names[::-1]):
                    start = time.perf_counter()
                    out[name] = fn(renderers[name], it)
                    times[name].append(time.perf_counter() - start)
                for name in names[1:]:
                    if out[name].dtype != out[names[0]].dtype or out[name].tobytes() != out[names[0]].tobytes():
                        sys.exit(f"bench_generator_ab: {what} item {i}: {name} renders other bytes than {names[0]}")
            n_per = [per or len(it) for it in its]
            med = {name: statistics.median(t / n for t, n in zip(times[name], n_per)) * 1000 for name in names}
            ratio = {name: statistics.median(b / a for a, b in zip(times[names[0]], times[name])) for name in names[1:]}
            print(f"| {what} (ms per {unit}, {len(its)} items) | " + " | ".join(f"{med[n]:.2f}" for n in names) + " | "
                  + " | ".join(f"{ratio[n]:.3f}" for n in names[1:]) + " |", flush=True)
            load.append(os.getloadavg()[0])
        print(f"\nload average {min(load):.1f}–{max(load):.1f}")


if __name__ == "__main__":
    main()
