"""GPU readiness check: one short job for a session that has a GPU lent (``device`` tool).

Prints (and writes as JSON to ``$OUT/gpu_check.json`` when ``OUT`` is set, else
``benchmarks/results/gpu_check.json``):

1. the card (name, memory, capability, bf16 support), torch and CUDA versions;
2. the pure-PyTorch sparse backend (paper-size MinkFPN cloud branch) on CUDA vs CPU: forward and
   forward+backward time for the same batch of structured 4096-point clouds, and the largest difference
   between the CUDA and CPU embeddings;
3. a paper-profile training step (batch 128, 240x320 images, 4096-point clouds; the engine's
   ``Trainer.forward_backward`` + Adam step, channels-last) for the teacher (0.5 fused + 0.5 cloud triplet)
   and the student (DistilVPR objective against cached teacher embeddings), in fp32, fp16 and bf16
   autocast: ms/step, samples/s, peak memory and the first-step loss (fp32 vs AMP on the same batch and
   initial weights). Inputs are pre-collated on the GPU: the data pipeline is not timed;
4. the distributed code path on CUDA: 2 DDP ranks (nccl on 2+ GPUs, else gloo on one shared GPU) run one
   step of the smoke student and teacher; loss and gradients vs the single-process step;
5. the real engine end to end on CUDA: ``train_teacher`` + ``distill_student`` (smoke profile, toy dataset,
   mixed precision "auto"), single-process.

Usage (one job, a few minutes on an H100)::

    .venv/bin/python benchmarks/gpu_check.py                 # everything
    .venv/bin/python benchmarks/gpu_check.py --skip-cpu      # no CPU comparison (faster)
    .venv/bin/python benchmarks/gpu_check.py --device cpu --quick   # self-test of the script on a CPU

ImageNet weights are not needed (``pretrained_image_weights=None``: throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from distilvpr_lib.config import apply_overrides, profile_config  # noqa: E402

RESULTS: dict[str, Any] = {}


def say(message: str) -> None:
    print(message, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> tuple[float, Any]:
    """Median seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs; returns (seconds, last result)."""
    out = None
    for _ in range(warmup):
        out = fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), out


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------
def structured_cloud(rng: np.random.Generator, points: int = 4096) -> np.ndarray:
    """A street-like cloud in the normalised [-1, 1] box: ground, building fronts, poles, cars."""
    parts = []
    n_ground = points * 2 // 5
    ground = np.c_[rng.uniform(-1, 1, (n_ground, 2)), -0.6 + 0.01 * rng.standard_normal(n_ground)]
    parts.append(ground)
    n_walls = points * 2 // 5
    per = n_walls // 6
    for _ in range(6):
        start, end = rng.uniform(-1, 1, 2), rng.uniform(-1, 1, 2)
        t = rng.uniform(0, 1, per)
        height = rng.uniform(0.3, 1.0)
        xy = start + t[:, None] * (end - start)
        parts.append(np.c_[xy, -0.6 + rng.uniform(0, height, per)])
    rest = points - sum(len(p) for p in parts)
    centres = rng.uniform(-0.9, 0.9, (8, 2))
    which = rng.integers(0, 8, rest)
    parts.append(np.c_[centres[which] + rng.uniform(-0.05, 0.05, (rest, 2)), -0.6 + rng.uniform(0, 0.3, rest)])
    return np.concatenate(parts).astype(np.float32)[:points]


def make_batch(batch_size: int, image_hw: tuple[int, int], quantization: float, seed: int = 0) -> dict[str, Any]:
    """A collated training batch: positive pairs (2k, 2k+1), every other sample a negative."""
    from distilvpr_lib.data.collate import batch_coordinates, make_masks, quantize

    rng = np.random.default_rng(seed)
    clouds = [structured_cloud(rng) for _ in range(batch_size)]
    tuples = {i: SimpleNamespace(positives=np.array([i ^ 1]), non_negatives=np.array([i ^ 1]),
                                 rel_scan_filepath=f"synthetic/{i:05d}.bin") for i in range(batch_size)}
    labels = np.arange(batch_size)
    positives, negatives = make_masks(labels, tuples)
    generator = torch.Generator().manual_seed(seed)
    return {
        "coords": batch_coordinates([quantize(torch.from_numpy(c), quantization) for c in clouds]),
        "images": torch.randn(batch_size, 3, *image_hw, generator=generator),
        "labels": torch.from_numpy(labels),
        "rel_paths": [t.rel_scan_filepath for t in tuples.values()],
        "positives_mask": positives,
        "negatives_mask": negatives,
        "skip": False,
    }


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------
def section_environment(device: torch.device) -> None:
    info: dict[str, Any] = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", gpus=torch.cuda.device_count(),
                    bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
    RESULTS["environment"] = info
    say("== environment: " + ", ".join(f"{k}={v}" for k, v in info.items()))


def section_sparse(device: torch.device, batch_size: int, skip_cpu: bool, quick: bool) -> None:
    from distilvpr_lib.models.teacher import build_cloud_branch

    cfg = profile_config("paper")
    batch = make_batch(batch_size, (8, 8), cfg.data.quantization_size, seed=1)
    coords = batch["coords"]
    torch.manual_seed(0)
    branch = build_cloud_branch(cfg.model)
    rows = []
    outputs = {}
    targets = [torch.device("cpu")] if device.type == "cpu" else ([device] if skip_cpu else [device, torch.device("cpu")])
    for where in targets:
        model = branch.to(where)
        c = coords.to(where)
        repeats, warmup = (1, 1) if (quick or where.type == "cpu") else (5, 2)

        def forward() -> torch.Tensor:
            model.eval()
            with torch.no_grad():
                return model(c, num_clouds=batch_size)

        def train_step() -> None:
            model.train()
            model.zero_grad(set_to_none=True)
            model(c, num_clouds=batch_size).square().sum().backward()

        fwd, out = timed(forward, where, repeats, warmup)
        step, _ = timed(train_step, where, repeats, warmup)
        outputs[where.type] = out.float().cpu()
        rows.append({"device": str(where), "clouds": batch_size, "voxels": int(coords.shape[0]),
                     "forward_ms": round(fwd * 1e3, 1), "forward_backward_ms": round(step * 1e3, 1),
                     "clouds_per_s_train": round(batch_size / step, 1)})
        say(f"== sparse backend (torch) {where}: {batch_size} clouds, {coords.shape[0]} voxels: forward "
            f"{fwd * 1e3:.1f} ms, forward+backward {step * 1e3:.1f} ms ({batch_size / step:.1f} clouds/s)")
    result: dict[str, Any] = {"rows": rows}
    if "cuda" in outputs and "cpu" in outputs:
        diff = float((outputs["cuda"] - outputs["cpu"]).abs().max())
        scale = float(outputs["cpu"].abs().max())
        result.update(max_abs_diff=diff, max_abs=scale, speedup_forward=round(rows[1]["forward_ms"] / rows[0]["forward_ms"], 1),
                      speedup_train=round(rows[1]["forward_backward_ms"] / rows[0]["forward_backward_ms"], 1))
        say(f"   CUDA vs CPU embeddings: max |diff| {diff:.2e} (max |value| {scale:.2f}); speed-up forward "
            f"x{result['speedup_forward']}, train x{result['speedup_train']}")
    RESULTS["sparse_backend"] = result


def _step_runner(kind: str, device: torch.device, amp: str | None, batch: dict[str, Any], quick: bool) -> dict[str, Any]:
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

    cfg = apply_overrides(profile_config("paper"), {"model.pretrained_image_weights": None,
                                                    "train.mixed_precision": amp is not None,
                                                    "train.amp_dtype": amp or "float16"})
    torch.manual_seed(0)
    if kind == "teacher":
        model = build_teacher(cfg.model)
        objective = TeacherObjective(cfg.train)
        groups = teacher_parameter_groups(model, cfg.train)
    else:
        model = build_student(cfg.model)
        generator = torch.Generator().manual_seed(0)
        cache = TeacherCache(list(batch["rel_paths"]), torch.randn(len(batch["rel_paths"]), cfg.model.student_dim,
                                                                   generator=generator) * 2.0)
        objective = StudentObjective(cfg.train, cache, Distiller(cfg.distill).to(device))
        groups = student_parameter_groups(model, cfg.train)
    optimizer = build_optimizer(groups, cfg.train)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model, objective, optimizer, build_scheduler(optimizer, cfg.train), [], cfg.train, out,
                          device=device, progress=False, tensorboard=False)
        trainer.prepare()
        trainer.train_model.train()
        on_device = to_device(batch, device)
        first: list[float] = []

        def step() -> None:
            result = trainer.forward_backward(on_device)
            trainer.scaler.step(trainer.optimizer)
            trainer.scaler.update()
            if not first:
                first.append(float(result.total.detach()))

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        repeats, warmup = (1, 1) if quick else (10, 3)
        seconds, _ = timed(step, device, repeats, warmup)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    n = len(batch["labels"])
    return {"kind": kind, "amp": amp or "fp32", "batch": n, "ms_per_step": round(seconds * 1e3, 1),
            "samples_per_s": round(n / seconds, 1), "peak_gib": round(peak, 2), "first_loss": first[0],
            "channels_last": trainer.channels_last, "amp_dtype": str(trainer.amp_dtype) if trainer.use_amp else None}


def section_training_steps(device: torch.device, batch_size: int, image_hw: tuple[int, int], quick: bool) -> None:
    cfg = profile_config("paper")
    batch = make_batch(batch_size, image_hw, cfg.data.quantization_size, seed=2)
    rows = []
    modes: list[str | None] = [None] if device.type == "cpu" else [None, "float16", "bfloat16"]
    for kind in ("teacher", "student"):
        for amp in modes:
            try:
                row = _step_runner(kind, device, amp, batch, quick)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other modes
                row = {"kind": kind, "amp": amp or "fp32", "error": f"{type(exc).__name__}: {exc}"}
                traceback.print_exc()
            rows.append(row)
            if "error" in row:
                say(f"== step {kind} {row['amp']}: FAILED {row['error']}")
            else:
                say(f"== paper step {kind:7s} {row['amp']:8s} batch {row['batch']} {image_hw[0]}x{image_hw[1]}: "
                    f"{row['ms_per_step']:.1f} ms/step, {row['samples_per_s']:.1f} samples/s, peak "
                    f"{row['peak_gib']:.2f} GiB, first loss {row['first_loss']:.5f}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    RESULTS["training_steps"] = rows


def section_ddp(device: torch.device, out_dir: Path) -> None:
    from distributed_helpers import gradient_worker

    from distilvpr_lib.engine.train.distributed import spawn_local

    backend = "nccl" if device.type == "cuda" and torch.cuda.device_count() >= 2 else "gloo"
    folder = out_dir / "ddp"
    folder.mkdir(parents=True, exist_ok=True)
    started = time.time()
    spawn_local(gradient_worker, 2, str(folder), 2, device.type, backend)
    report = json.loads((folder / "gradients_rank0.json").read_text())
    RESULTS["ddp"] = {"backend": backend, "device": device.type, "seconds": round(time.time() - started, 1), **report}
    for kind, row in report.items():
        say(f"== DDP 2 ranks ({backend}, {device.type}) {kind}: loss rel diff {row['loss_rel']:.1e}, "
            f"grad rel diff {row['grad_rel']:.1e}, BN buffers max diff {row['buffer_max_abs']:.1e}")


def section_engine(device: torch.device, out_dir: Path) -> None:
    from distilvpr_lib.data.toy import write_toy_oxford_dataset
    from distilvpr_lib.engine.runs.student_run import distill_student
    from distilvpr_lib.engine.runs.teacher_run import train_teacher

    dataset = write_toy_oxford_dataset(out_dir / "toy", n_runs=3, route_length_m=300.0)
    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), "train.device": str(device),
                                                    "train.mixed_precision": True, "train.amp_dtype": "auto"})
    started = time.time()
    teacher = train_teacher(cfg, out_dir / "teacher", progress=False)
    student = distill_student(cfg, out_dir / "teacher", out_dir / "student", progress=False)
    RESULTS["engine"] = {"seconds": round(time.time() - started, 1), "teacher_device": teacher["device"],
                         "teacher_test_AR@1": teacher["test"]["AR@1"], "student_test_AR@1": student["test"]["AR@1"],
                         "teacher_final_total": teacher["final_losses"]["total"],
                         "student_final_total": student["final_losses"]["total"]}
    say(f"== engine on {device}: train_teacher + distill_student (smoke, AMP auto) in {RESULTS['engine']['seconds']} s; "
        f"test AR@1 teacher {teacher['test']['AR@1']:.1f}, student {student['test']['AR@1']:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (self-test of this script)")
    parser.add_argument("--batch", type=int, default=128, help="training-step batch (paper: 128)")
    parser.add_argument("--sparse-batch", type=int, default=32, help="clouds in the CUDA-vs-CPU comparison")
    parser.add_argument("--skip-cpu", action="store_true", help="no CPU timing in the sparse comparison")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (checks the script itself)")
    parser.add_argument("--only", nargs="+", default=None,
                        choices=("environment", "sparse", "steps", "ddp", "engine"), help="run these sections only")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        say("CUDA is not available: nothing to check (use --device cpu --quick to test this script)")
        return 2
    image_hw = (240, 320)
    batch, sparse_batch = args.batch, args.sparse_batch
    if args.quick:
        image_hw, batch, sparse_batch = (60, 80), 8, 4
    out_dir = Path(os.environ.get("OUT") or REPO / "benchmarks" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    sections = {
        "environment": lambda: section_environment(device),
        "sparse": lambda: section_sparse(device, sparse_batch, args.skip_cpu, args.quick),
        "steps": lambda: section_training_steps(device, batch, image_hw, args.quick),
        "ddp": lambda: section_ddp(device, work),
        "engine": lambda: section_engine(device, work),
    }
    started = time.time()
    failed = []
    for name, run in sections.items():
        if args.only and name not in args.only:
            continue
        t = time.time()
        try:
            run()
        except Exception as exc:  # noqa: BLE001 - one failing section must not hide the others' figures
            failed.append(name)
            RESULTS.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"
            say(f"== {name}: FAILED ({type(exc).__name__}: {exc})")
            traceback.print_exc()
        say(f"   ({name}: {time.time() - t:.1f} s)")
    RESULTS["total_seconds"] = round(time.time() - started, 1)
    path = out_dir / "gpu_check.json"
    path.write_text(json.dumps(RESULTS, indent=2, default=str))
    say(f"wrote {path} ({RESULTS['total_seconds']} s){'; FAILED: ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
