"""Train-step throughput of the teacher and the student, the student's achieved GFLOP/s against a
measured fp32 matmul peak of the same machine, and the sparse cloud branch per backend — in one run.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_train_step.py                  # default (< ~3 min)
    .venv/bin/python benchmarks/bench_train_step.py --steps 10 --batch 32 --threads 2  # longer, steadier
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_train_step.py --study-step --batch 32 --threads 1
        # the study profile's student step through the trainer: kernel variants interleaved (issue 26)

A train step = forward + loss + backward + Adam step (the reference parameter groups and learning
rates of the engine) on random-but-realistic inputs: images of ``--resolutions`` (cpu profile 96x128 and
paper 240x320; random pixels normalised like the data pipeline), clouds of 4096 points from ``data/cpu``
(``--clouds``; procedural street scenes when absent) quantised at ``--quantization`` (0.01), and a batch
of ``--batch`` elements forming pairs of the same place (so the batch-hard triplet loss has positives).
Teacher loss: the engine's TeacherObjective (0.5 fused + 0.5 cloud triplet); student loss: the batch-hard
triplet on its embedding (the distillation terms against cached teacher embeddings are small matrix ops on
(B, 384) and are left out). Models: the reference sizes (ModelConfig defaults; the cpu and paper profiles
share them), trained from scratch.

FLOPs of one student step (forward + backward) are counted with ``torch.utils.flop_counter.FlopCounterMode``
(convolutions and matmuls; the Adam update and element-wise ops are not counted). The peak is the median
rate (best of 10) of 2048x2048 fp32 matmuls, measured at the start and the end, with the same thread count. Times are medians of ``--steps`` steps after
``--warmup`` untimed ones; the load average is printed because the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from distilvpr_lib.config import ModelConfig, TrainConfig  # noqa: E402
from distilvpr_lib.models import SPARSE_BACKENDS, build_student, build_teacher  # noqa: E402


def _sparse_bench():
    """The helpers of bench_sparse_backends.py (procedural clouds, quantisation, branch timing)."""
    spec = importlib.util.spec_from_file_location("bench_sparse_backends", Path(__file__).with_name(
        "bench_sparse_backends.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPARSE = _sparse_bench()


def load_clouds(folder: Path, batch: int, seed: int) -> tuple[list[np.ndarray], str]:
    """``batch`` (4096, 3) clouds from a generated/real Oxford-layout folder, or procedural ones."""
    files = sorted(folder.glob("oxford/*/pointcloud_20m/*.bin"))
    if len(files) >= batch:
        picks = np.random.default_rng(seed).choice(len(files), batch, replace=False)
        return [np.fromfile(files[i], dtype=np.float64).reshape(-1, 3) for i in picks], f"{folder}"
    rng = np.random.default_rng(seed)
    return [SPARSE.street_cloud(rng) for _ in range(batch)], "procedural street scenes"


def make_batch(coords: torch.Tensor, batch: int, height: int, width: int, seed: int) -> dict[str, torch.Tensor]:
    """Batch dict as the collate function gives it: coords, images, positives / negatives masks."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    images = (torch.rand(batch, 3, height, width, generator=generator) - mean) / std
    place = torch.arange(batch) // 2
    same = place[:, None] == place[None, :]
    return {"coords": coords, "images": images, "positives_mask": same & ~torch.eye(batch, dtype=torch.bool),
            "negatives_mask": ~same}


def teacher_step_fn(model_cfg: ModelConfig, train_cfg: TrainConfig, bf16: bool = False):
    """A teacher train step; ``bf16``: bfloat16 autocast on the CPU with the sparse branch kept in float32,
    exactly as the trainer runs it (``train.mixed_precision``, ``amp_dtype="bfloat16"``)."""
    from distilvpr_lib.engine.train.devices import keep_float32_under_autocast
    from distilvpr_lib.engine.train.objectives import TeacherObjective
    from distilvpr_lib.engine.train.optim import build_optimizer, teacher_parameter_groups

    torch.manual_seed(0)
    model = build_teacher(model_cfg).train()
    if bf16:
        keep_float32_under_autocast(model)
    optimizer = build_optimizer(teacher_parameter_groups(model, train_cfg), train_cfg)
    objective = TeacherObjective(train_cfg)

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            outputs = model(batch)
        objective(outputs, batch).total.backward()
        optimizer.step()

    return step


def student_step_fn(model_cfg: ModelConfig, train_cfg: TrainConfig, bf16: bool = False):
    """A student train step (task triplet only); ``bf16``: bfloat16 autocast of the forward on the CPU."""
    from distilvpr_lib.engine.train.optim import build_optimizer, student_parameter_groups
    from distilvpr_lib.losses.triplet import teacher_task_loss

    torch.manual_seed(0)
    model = build_student(model_cfg).train()
    optimizer = build_optimizer(student_parameter_groups(model, train_cfg), train_cfg)

    def step(batch: dict[str, torch.Tensor]) -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(batch)
        out = {"embedding": out["embedding"].float()}
        terms, _ = teacher_task_loss({"embedding": out["embedding"]}, (batch["positives_mask"], batch["negatives_mask"]),
                                     weights=(1.0, 0.0, 0.0), margin=train_cfg.margin)
        sum(terms.values()).backward()
        optimizer.step()

    return step


def time_steps(step, batch: dict[str, torch.Tensor], warmup: int, steps: int) -> tuple[float, float]:
    """``(median, fastest)`` seconds per step (the fastest is the least disturbed by other jobs)."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), min(times)


def count_flops(step, batch: dict[str, torch.Tensor]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(batch)
    return int(counter.get_total_flops())


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 GFLOP/s over ``repeats`` n x n matmuls with the current thread count (a peak: the maximum)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        rates.append(2.0 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return max(rates)


def matmul_peak_dtype(dtype: torch.dtype, n: int = 1024, budget_s: float = 5.0) -> float:
    """Best GFLOP/s of n x n matmuls in ``dtype`` (at most ``budget_s`` seconds of timing after one warm-up)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.mm(a, b)
    rates, spent = [], 0.0
    while len(rates) < 10 and (spent < budget_s or not rates):
        t0 = time.perf_counter()
        torch.mm(a, b)
        elapsed = time.perf_counter() - t0
        spent += elapsed
        rates.append(2.0 * n ** 3 / elapsed / 1e9)
    return max(rates)


#: The student train-step variants of ``--study-step``: name -> (train overrides, Adam implementation, compile).
STUDY_VARIANTS: dict[str, tuple[dict[str, object], str, bool]] = {
    "before (per-parameter Adam, NCHW)": ({}, "for-loop", False),
    "foreach Adam (default now)": ({}, "foreach", False),
    "fused Adam": ({"train.fused_adam": True}, "fused", False),
    "channels-last": ({"train.channels_last_cpu": True}, "foreach", False),
    "channels-last + fused Adam": ({"train.channels_last_cpu": True, "train.fused_adam": True}, "fused", False),
    "channels-last + fused + compile": ({"train.channels_last_cpu": True, "train.fused_adam": True}, "fused", True),
}


def study_trainer_step(overrides: dict[str, object], adam: str, compile_model: bool, precision: str):
    """One student train step exactly as the trainer runs it: ``Trainer.forward_backward`` (autocast, channels-last
    as configured, StudentObjective of ``nokd`` with the study profile's loss diagnostics) + the optimiser step."""
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.train.loop import Trainer
    from distilvpr_lib.engine.train.objectives import StudentObjective
    from distilvpr_lib.engine.train.optim import build_optimizer, build_scheduler, student_parameter_groups

    cfg = apply_overrides(profile_config("study"), {**overrides, "model.pretrained_image_weights": None,
                                                    "train.mixed_precision": precision == "bf16"})
    torch.manual_seed(0)
    model = build_student(cfg.model)
    groups = student_parameter_groups(model, cfg.train)
    if adam == "for-loop":  # the optimiser before issue 26: torch's CPU default, one parameter at a time
        optimizer = torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay, foreach=False)
    else:
        optimizer = build_optimizer(groups, cfg.train)
        assert bool(optimizer.param_groups[0].get("fused")) == (adam == "fused")
    trainer = Trainer(model, StudentObjective(cfg.train, None), optimizer, build_scheduler(optimizer, cfg.train), [],
                      cfg.train, out_dir="/tmp/bench_train_step_unused", device="cpu", progress=False,
                      tensorboard=False)
    trainer.prepare()
    if compile_model:
        trainer.train_model = torch.compile(model)

    def step(batch: dict[str, torch.Tensor]) -> None:
        trainer.forward_backward(dict(batch))
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()

    return step


def study_step(args: argparse.Namespace) -> None:
    """``--study-step``: the study profile's student step, variants interleaved, against the matmul peak."""
    height, width = 60, 80
    batch = make_batch(torch.zeros((0, 4), dtype=torch.int32), args.batch, height, width, args.seed)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, load average {os.getloadavg()[0]:.1f} (shared machine: "
          "compare the rows of this run only)")
    peaks = {name: matmul_peak_dtype(d) for name, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print("matmul peak (1024x1024, best): " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks.items()))
    variants = {name: v for name, v in STUDY_VARIANTS.items() if args.compile or not v[2]}
    steps = {name: study_trainer_step(o, adam, comp, args.precision) for name, (o, adam, comp) in variants.items()}
    flops = count_flops(steps[next(iter(steps))], batch)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for name, step in steps.items():  # warm-up (oneDNN primitives; compile)
        for _ in range(args.warmup):
            step(batch)
    for _ in range(args.rounds):
        for name, step in steps.items():
            for _ in range(args.steps):
                t0 = time.perf_counter()
                step(batch)
                times[name].append(time.perf_counter() - t0)
    peaks_end = {name: matmul_peak_dtype(d) for name, d in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    peak = max(peaks[args.precision], peaks_end[args.precision])
    print("matmul peak at the end: " + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in peaks_end.items()))
    print(f"\nstudent train step, batch {args.batch}, {height}x{width}, {args.precision} "
          f"({'bfloat16 autocast' if dtype == torch.bfloat16 else 'float32'}), {flops / 1e9:.2f} GFLOP (fwd+bwd); "
          f"{args.rounds} rounds x {args.steps} steps per variant, interleaved; % of the {args.precision} matmul peak "
          f"{peak:.1f} GFLOP/s")
    base = statistics.median(times[next(iter(times))])
    print("| variant | ms/step (median) | samples/s | GFLOP/s | % of peak | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in times.items():
        t = statistics.median(values)
        print(f"| {name} | {t * 1e3:.1f} | {args.batch / t:.1f} | {flops / t / 1e9:.1f} | "
              f"{100 * flops / t / 1e9 / peak:.1f} % | {base / t:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="batch size of every step (pairs of places)")
    parser.add_argument("--resolutions", nargs="+", default=["96x128", "240x320"], help="HxW image sizes")
    parser.add_argument("--clouds", type=Path, default=REPO / "data" / "cpu", help="Oxford-layout folder")
    parser.add_argument("--quantization", type=float, default=0.01)
    parser.add_argument("--backend", default="torch", help="sparse backend of the teacher steps")
    parser.add_argument("--sparse-backends", nargs="+", default=list(SPARSE_BACKENDS))
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="also time bfloat16 autocast steps (CPU; sparse branch in float32) against fp32")
    parser.add_argument("--study-step", action="store_true",
                        help="only the study profile's student step (60x80; use --batch 32 --threads 1): the "
                             "trainer's path, its kernel variants interleaved, against the matmul peak (issue 26)")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="--study-step: bfloat16 autocast (the study profile) or float32")
    parser.add_argument("--rounds", type=int, default=3, help="--study-step: interleaved rounds")
    parser.add_argument("--compile", action="store_true", help="--study-step: also a torch.compile variant")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.study_step:
        study_step(args)
        return
    started = time.perf_counter()

    clouds, what = load_clouds(args.clouds, args.batch, args.seed)
    coords = SPARSE.batched_coords(clouds, args.quantization)
    model_cfg = dataclasses.replace(ModelConfig(), sparse_backend=args.backend, pretrained_image_weights=None)
    train_cfg = TrainConfig()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (the machine may be shared: times are upper bounds)")
    print(f"batch {args.batch}; clouds: {len(clouds[0])} points x {args.batch} from {what}, quantization "
          f"{args.quantization} -> {len(coords)} voxels; medians of {args.steps} steps after {args.warmup} warm-up")

    peak = matmul_peak()
    print(f"fp32 matmul peak (2048x2048, {torch.get_num_threads()} threads): {peak:8.1f} GFLOP/s")

    print("\ntrain step = forward + loss + backward + Adam step")
    teacher_step = teacher_step_fn(model_cfg, train_cfg)
    student_step = student_step_fn(model_cfg, train_cfg)
    for resolution in args.resolutions:
        height, width = (int(v) for v in resolution.lower().split("x"))
        batch = make_batch(coords, args.batch, height, width, args.seed)
        t_teacher, best_teacher = time_steps(teacher_step, batch, args.warmup, args.steps)
        t_student, best_student = time_steps(student_step, batch, args.warmup, args.steps)
        flops = count_flops(student_step, batch)
        achieved, achieved_best = flops / t_student / 1e9, flops / best_student / 1e9
        pad = " " * (len(resolution) + 2)
        print(f"{resolution}: teacher ({args.backend}) {t_teacher * 1e3:8.1f} ms/step = "
              f"{args.batch / t_teacher:6.1f} samples/s (fastest step {args.batch / best_teacher:6.1f})")
        print(f"{pad}student {t_student * 1e3:8.1f} ms/step = {args.batch / t_student:6.1f} samples/s "
              f"(fastest step {args.batch / best_student:6.1f})")
        print(f"{pad}student step {flops / 1e9:7.2f} GFLOP (fwd+bwd, FlopCounterMode): median {achieved:6.1f} GFLOP/s "
              f"= {100 * achieved / peak:5.1f} % of the matmul peak, fastest {achieved_best:6.1f} GFLOP/s = "
              f"{100 * achieved_best / peak:5.1f} % (goal >= 70 %)")
        if args.bf16:
            tb_teacher, _ = time_steps(teacher_step_fn(model_cfg, train_cfg, bf16=True), batch, args.warmup, args.steps)
            tb_student, _ = time_steps(student_step_fn(model_cfg, train_cfg, bf16=True), batch, args.warmup, args.steps)
            print(f"{pad}bf16 autocast: teacher {tb_teacher * 1e3:8.1f} ms/step ({t_teacher / tb_teacher:4.2f}x fp32), "
                  f"student {tb_student * 1e3:8.1f} ms/step ({t_student / tb_student:4.2f}x fp32)")

    print(f"\nsparse cloud branch (MinkFPN + GeM), forward + backward on the same {len(coords)} voxels:")
    for name in args.sparse_backends:
        if not SPARSE_BACKENDS[name].is_available():
            print(f"{name:>10}: not available (MinkowskiEngine: python scripts/build_minkowski.py)")
            continue
        t = SPARSE.time_backend(name, coords, args.batch, args.warmup, args.steps)
        print(f"{name:>10}: forward {t['forward'] * 1e3:8.1f} ms  backward {t['backward'] * 1e3:8.1f} ms  "
              f"total {t['total'] * 1e3:8.1f} ms  process CPU {t['cpu'] * 1e3:8.1f} ms")
    print(f"fp32 matmul peak again at the end: {matmul_peak():8.1f} GFLOP/s")
    print(f"\nwall time {time.perf_counter() - started:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
