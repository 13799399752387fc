"""Forward / backward time of the teacher's cloud branch on the sparse backends.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_sparse_backends.py            # both backends
    .venv/bin/python benchmarks/bench_sparse_backends.py --backends torch --repeats 5 --source synthetic

Batch: ``--batch`` clouds (16) of 4096 points quantised at ``--quantization`` (0.01), from the real Oxford
fixtures (``../shared/data/real/oxford_dh3d`` or ``$DISTILVPR_REAL_DATA``) when present, otherwise from a
procedural street-like scene (ground, facades, boxes, normalised like PointNetVLAD submaps). The network is
the reference MinkFPN (planes 32/64/64, layers 1/1/1, one top-down level, 128-d GeM) in training mode.
Prints the medians of ``--repeats`` timed iterations after ``--warmup`` untimed ones: wall-clock forward,
backward and total, and the process CPU time of forward + backward (steadier than wall time on a shared
machine; equal to it when nothing else runs and with one thread). ``os.getloadavg()`` is printed as a hint.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilvpr_lib.config import ModelConfig  # noqa: E402
from distilvpr_lib.models import SPARSE_BACKENDS, build_cloud_branch  # noqa: E402


def street_cloud(rng: np.random.Generator, n: int = 4096) -> np.ndarray:
    """A procedural (n, 3) submap: ground, two facades with windows, a few boxes; PointNetVLAD normalisation."""
    parts = []
    k = n // 4
    parts.append(np.c_[rng.uniform(-10, 10, k), rng.uniform(-10, 10, k), rng.normal(0, 0.05, k)])
    for side in (-1, 1):
        x = rng.uniform(-10, 10, k)
        y = side * (6 + rng.normal(0, 0.05, k))
        z = rng.uniform(0, 8, k)
        parts.append(np.c_[x, y, z])
    m = n - 3 * k
    centres = rng.uniform(-8, 8, (6, 2))
    c = centres[rng.integers(0, 6, m)]
    parts.append(np.c_[c[:, 0] + rng.uniform(-1, 1, m), c[:, 1] + rng.uniform(-0.8, 0.8, m), rng.uniform(0, 1.5, m)])
    pts = np.concatenate(parts)[:n]
    pts -= pts.mean(0)
    pts *= 0.5 / np.linalg.norm(pts, axis=1).mean()
    return np.clip(-pts, -1, 1)


def load_clouds(source: str, batch: int, seed: int) -> tuple[list[np.ndarray], str]:
    from distilvpr_lib.paths import real_data_dir

    real = real_data_dir() / "oxford_dh3d"
    files = sorted(real.glob("oxford/*/pointcloud_20m/*.bin"))
    if source in ("auto", "real") and len(files) >= batch:
        return [np.fromfile(f, dtype=np.float64).reshape(-1, 3) for f in files[:batch]], f"real Oxford ({real})"
    if source == "real":
        sys.exit(f"error: fewer than {batch} real clouds under {real}")
    rng = np.random.default_rng(seed)
    return [street_cloud(rng) for _ in range(batch)], "procedural street scenes"


def batched_coords(clouds: list[np.ndarray], quantization: float) -> torch.Tensor:
    rows = []
    for b, pts in enumerate(clouds):
        vox = torch.unique(torch.floor(torch.from_numpy(pts) / quantization).long(), dim=0)
        rows.append(torch.cat([torch.full((len(vox), 1), b), vox], 1))
    return torch.cat(rows).int()


def time_backend(name: str, coords: torch.Tensor, batch: int, warmup: int, repeats: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_cloud_branch(ModelConfig(sparse_backend=name)).train()
    fwd, bwd, cpu = [], [], []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = model(coords, batch)
        t1 = time.perf_counter()
        out.square().sum().backward()
        t2 = time.perf_counter()
        c1 = time.process_time()
        if i >= warmup:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            cpu.append(c1 - c0)
    return {"forward": statistics.median(fwd), "backward": statistics.median(bwd),
            "total": statistics.median([a + b for a, b in zip(fwd, bwd)]), "cpu": statistics.median(cpu)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", default=list(SPARSE_BACKENDS))
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--quantization", type=float, default=0.01)
    parser.add_argument("--source", choices=("auto", "real", "synthetic"), default="auto")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clouds, what = load_clouds(args.source, args.batch, args.seed)
    coords = batched_coords(clouds, args.quantization)
    print(f"{args.batch} clouds x {len(clouds[0])} points ({what}), quantization {args.quantization}: "
          f"{len(coords)} voxels; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for name in args.backends:
        if not SPARSE_BACKENDS[name].is_available():
            print(f"{name:>10}: not available (MinkowskiEngine: python scripts/build_minkowski.py)")
            continue
        t = time_backend(name, coords, args.batch, args.warmup, args.repeats)
        print(f"{name:>10}: forward {t['forward'] * 1e3:8.1f} ms   backward {t['backward'] * 1e3:8.1f} ms   "
              f"total {t['total'] * 1e3:8.1f} ms   process CPU {t['cpu'] * 1e3:8.1f} ms   (medians of {args.repeats})")


if __name__ == "__main__":
    main()
