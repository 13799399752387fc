"""Training throughput on the CPU: one process vs N DistributedDataParallel processes (gloo).

Each configuration runs the real engine (``run_setup.make_training_loader`` -> ``Trainer.fit``: data loading and
augmentation in the process, forward, global-batch loss, backward, DDP gradient average, Adam) for a few
epochs of a generated dataset, in fresh processes started like torchrun would (``engine.train.distributed.
spawn_local`` sets RANK / WORLD_SIZE / MASTER_*; with 1 process the ordinary single-process engine runs).
Validation, test evaluation and checkpoint time are not counted: samples/s = samples trained in an
epoch / the epoch's training seconds, the median over the epochs after the first (warm-up).

Configurations: ``PxT`` = P processes with T torch threads each (``1x1``, ``1x2``, ``2x1`` by default,
so that ``1x2`` and ``2x1`` use the same 2 cores). Also printed: the CPU time (all processes, whole
run) per sample trained — the work DDP adds, which on a busy machine says more than the wall clock.

Usage::

    .venv/bin/python benchmarks/bench_distributed.py                       # smoke profile, teacher + student
    .venv/bin/python benchmarks/bench_distributed.py --profile cpu --kinds teacher --epochs 3
    .venv/bin/python benchmarks/bench_distributed.py --dataset data/cpu --configs 1x1 2x1 4x1

The dataset (default) is generated once into ``benchmarks/results/bench_distributed_<profile>/`` with the
profile's generator settings on a longer route (``--route-m``), so that an epoch has many batches.
Results are printed and written to ``benchmarks/results/bench_distributed_<profile>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from distilvpr_lib.config import apply_overrides, profile_config  # noqa: E402
from distilvpr_lib.engine.train.distributed import spawn_local  # noqa: E402


def _worker(kind: str, profile: str, dataset: str, epochs: int, threads: int, result_path: str,
            overrides: dict[str, str]) -> None:
    """One rank of a configuration: train ``epochs`` epochs, rank 0 writes the per-epoch records."""
    torch.set_num_threads(threads)
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs.run_setup import make_training_loader
    from distilvpr_lib.engine.train.distributed import init_distributed, shutdown_distributed
    from distilvpr_lib.engine.train.seeding import seed_everything
    from distilvpr_lib.engine.runs.teacher_cache import TeacherCache
    from distilvpr_lib.engine.train.loop import Trainer
    from distilvpr_lib.engine.train.objectives import StudentObjective, TeacherObjective
    from distilvpr_lib.engine.train.optim import (
        build_optimizer,
        build_scheduler,
        student_parameter_groups,
        teacher_parameter_groups,
    )
    from distilvpr_lib.losses.distiller import Distiller
    from distilvpr_lib.models import build_student, build_teacher

    cfg = apply_overrides(profile_config(profile), {"data.dataset_dir": dataset, "train.device": "cpu",
                                                     "train.epochs": epochs, "train.use_validation_split": False,
                                                     **overrides})
    ctx = init_distributed("cpu")
    seed_everything(cfg.train.seed)
    benchmark = Benchmark.load(dataset)
    data_cfg = cfg.data
    if kind == "teacher":
        model = build_teacher(cfg.model)
        objective = TeacherObjective(cfg.train)
        groups = teacher_parameter_groups(model, cfg.train)
    else:
        model = build_student(cfg.model)
        rel_paths = [t.rel_scan_filepath for t in benchmark.training_tuples.values()]
        generator = torch.Generator().manual_seed(0)  # stand-in teacher embeddings: the cost is the same
        cache = TeacherCache(rel_paths, torch.randn(len(rel_paths), cfg.model.student_dim, generator=generator))
        objective = StudentObjective(cfg.train, cache, Distiller(cfg.distill))
        groups = student_parameter_groups(model, cfg.train)
        data_cfg = dataclasses.replace(cfg.data, augment_clouds=False)  # as distill_student
    optimizer = build_optimizer(groups, cfg.train)
    loader = make_training_loader(benchmark, cfg, ctx, data_cfg=data_cfg)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, objective, optimizer, build_scheduler(optimizer, cfg.train), loader, cfg.train, out,
                          device="cpu", progress=False, tensorboard=False,
                          distributed=ctx if ctx.is_distributed else None)
        cpu_started = time.process_time()
        history = trainer.fit(resume=False)
        cpu_seconds = ctx.all_gather_objects(time.process_time() - cpu_started)
        sampler = loader.batch_sampler
        samples = []
        for epoch in range(1, epochs + 1):
            batches = sampler.global_batches(epoch) if hasattr(sampler, "global_batches") else sampler.batches(epoch)
            samples.append(sum(len(b) for b in batches))
    if ctx.is_main:
        records = [{"epoch": e["epoch"], "seconds": e["seconds"], "batches": e["batches"], "samples": n,
                    "loss": e["losses"]["total"]} for e, n in zip(history.epochs, samples)]
        Path(result_path).write_text(json.dumps({"records": records, "world_size": ctx.world_size,
                                                 "cpu_seconds": cpu_seconds,
                                                 "batch_size": cfg.train.batch_size}))
    shutdown_distributed(ctx)


def ensure_dataset(profile: str, route_m: float, runs: int, root: Path) -> Path:
    """The profile's generator settings on a ``route_m`` loop with ``runs`` runs (generated once)."""
    from distilvpr_lib.data.synth import generate_dataset, is_complete

    out = root / f"bench_distributed_{profile}"
    synth = dataclasses.replace(profile_config(profile).synth, route_length_m=route_m, n_runs=runs,
                                workers=min(2, os.cpu_count() or 1))
    if not is_complete(out):
        started = time.time()
        generate_dataset(out, synth, progress=False)
        print(f"generated {out} in {time.time() - started:.0f} s")
    return out


def run_config(kind: str, profile: str, dataset: Path, epochs: int, processes: int, threads: int,
               overrides: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        started = time.time()
        spawn_local(_worker, processes, kind, profile, str(dataset), epochs, threads, str(result), overrides)
        wall = time.time() - started
        data = json.loads(result.read_text())
    records = data["records"]
    steady = records[1:] if len(records) > 1 else records
    seconds = statistics.median(r["seconds"] for r in steady)
    samples = statistics.median(r["samples"] for r in steady)
    return {"kind": kind, "processes": processes, "threads": threads, "batch_size": data["batch_size"],
            "batches_per_epoch": records[-1]["batches"], "samples_per_epoch": samples,
            "epoch_seconds": round(seconds, 2), "samples_per_s": round(samples / seconds, 2),
            "epoch_seconds_all": [r["seconds"] for r in records], "first_loss": records[0]["loss"],
            "cpu_ms_per_sample": round(1e3 * sum(data["cpu_seconds"]) / sum(r["samples"] for r in records), 1),
            "wall_s": round(wall, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="smoke", choices=("smoke", "cpu"))
    parser.add_argument("--dataset", default=None, help="existing dataset (default: generate one)")
    parser.add_argument("--kinds", nargs="+", default=["teacher", "student"], choices=("teacher", "student"))
    parser.add_argument("--configs", nargs="+", default=["1x1", "1x2", "2x1"], help="PROCESSESxTHREADS")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per configuration (the first is warm-up)")
    parser.add_argument("--route-m", type=float, default=1500.0, help="route of the generated dataset (m)")
    parser.add_argument("--runs", type=int, default=3, help="runs of the generated dataset")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config overrides, e.g. train.sync_batchnorm=false train.batch_size=32")
    parser.add_argument("--out", default=None, help="JSON results (default benchmarks/results/...)")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.overrides)

    results_dir = REPO / "benchmarks" / "results"
    dataset = Path(args.dataset) if args.dataset else ensure_dataset(args.profile, args.route_m, args.runs, results_dir)
    from distilvpr_lib.data.benchmark import Benchmark

    n_train = len(Benchmark.load(dataset).training_tuples)
    print(f"profile {args.profile} {' '.join(args.overrides)}, dataset {dataset} ({n_train} training sub-maps), {args.epochs} epochs per "
          f"configuration, torch {torch.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    rows = []
    for kind in args.kinds:
        baseline = None
        for config in args.configs:
            processes, threads = (int(x) for x in config.lower().split("x"))
            row = run_config(kind, args.profile, dataset, args.epochs, processes, threads, overrides)
            baseline = baseline or row["samples_per_s"]
            row["speedup_vs_first"] = round(row["samples_per_s"] / baseline, 2)
            rows.append(row)
            print(f"{kind:8s} {processes}x{threads}  batch {row['batch_size']}  {row['batches_per_epoch']} batches/epoch  "
                  f"epoch {row['epoch_seconds']:.2f} s  {row['samples_per_s']:.1f} samples/s  "
                  f"x{row['speedup_vs_first']:.2f}  CPU {row['cpu_ms_per_sample']:.1f} ms/sample  "
                  f"(epochs {row['epoch_seconds_all']}, first loss "
                  f"{row['first_loss']:.4f}, wall {row['wall_s']} s)", flush=True)
    payload = {"profile": args.profile, "overrides": overrides, "dataset": str(dataset), "training_submaps": n_train, "epochs": args.epochs,
               "torch": torch.__version__, "cpus": os.cpu_count(), "machine": platform.machine(),
               "load_after": os.getloadavg()[0], "rows": rows}
    out = Path(args.out) if args.out else results_dir / f"bench_distributed_{args.profile}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
