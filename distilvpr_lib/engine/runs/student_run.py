"""The student pipeline: config -> data -> teacher cache -> image-only student -> selection -> test -> run folder.

:func:`distill_student` trains the image-only student with the task loss plus the distillation terms of
``cfg.distill`` (:class:`~distilvpr_lib.engine.train.objectives.StudentObjective`). It reads the teacher's cache
(:func:`~distilvpr_lib.engine.runs.student_cache.get_teacher_cache`, building it once if it is missing or stale)
and never runs the teacher during training. Selection is on the **validation** split, the report on the
**test** split. The folder's files and ``metrics.json`` schema are in :mod:`~distilvpr_lib.engine.runs.run_folder`.
It resumes from ``checkpoints/last.pt`` by default; under ``torchrun`` it runs on every rank as
:func:`~distilvpr_lib.engine.runs.teacher_run.train_teacher` does.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.config import ExperimentConfig, method_name_problem
from distilvpr_lib.engine.train.checkpoint import load_weights, save_weights
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.train.distributed import shutdown_distributed
from distilvpr_lib.engine.evaluation.results import retrieval_summary
from distilvpr_lib.engine.train.loop import Trainer, TrainingHistory
from distilvpr_lib.engine.train.objectives import (
    RING_TERM,
    STUDENT_TASK_TERM,
    StudentObjective,
    distill_window_problem,
    ring_problem,
)
from distilvpr_lib.engine.train.optim import build_optimizer, build_scheduler, student_parameter_groups
from distilvpr_lib.engine.runs.run_evaluation import evaluate_split, load_benchmark
from distilvpr_lib.engine.runs.run_folder import (
    CONFIG_FILE,
    STUDENT_WEIGHTS_FILE,
    TEST_RESULTS_FILE,
    config_fingerprint,
)
from distilvpr_lib.engine.runs.run_setup import (
    check_benchmark,
    describe_world,
    history_metrics,
    make_cached_student_loader,
    make_training_loader,
    RunMetrics,
    finish_run,
    run_dataset_fingerprint,
    run_record,
    start_run,
)
from distilvpr_lib.engine.runs.student_cache import get_teacher_cache
from distilvpr_lib.engine.runs.teacher_cache import cache_file_name
from distilvpr_lib.errors import OptionError

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.engine.evaluation.results import RetrievalResults

PathLike = str | os.PathLike


def _last_stat(history: TrainingHistory, name: str) -> float | None:
    if not history.last:
        return None
    value = history.last["stats"].get(name)
    return None if value is None else float(value)



def distill_student(cfg: ExperimentConfig, teacher_dir: PathLike | None, out_dir: PathLike, resume: bool = True,
                    method: str | None = None, progress: bool = True, preflight: bool = True) -> dict[str, Any]:
    """Train the image-only student with the task loss plus the distillation terms of ``cfg.distill``.

    Args:
        cfg: resolved configuration; ``cfg.distill.method`` names the preset (``nokd``, ``distilvpr``, ...)
            and ``cfg.distill.terms`` overrides term weights.
        teacher_dir: a teacher folder written by :func:`train_teacher` (may be ``None`` for ``nokd``).
        out_dir: the run folder (``runs/<name>``), created.
        resume: continue from ``checkpoints/last.pt`` when present.
        method: shorthand that overrides ``cfg.distill.method``.
        progress: tqdm bars and per-epoch lines.
        preflight: check every input first (:func:`~distilvpr_lib.engine.runs.preflight.preflight_distill`);
            ``False`` only when the caller has just run that check (the CLI does, before torch is imported).

    Returns:
        The metrics dict written to ``metrics.json`` (schema in the module docstring).
    """
    from distilvpr_lib.engine.runs.preflight import preflight_distill
    from distilvpr_lib.engine.runs.run_guard import run_unless_complete
    from distilvpr_lib.losses.distiller import Distiller

    if method is not None:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, method=method))
    if Distiller(cfg.distill).weights and teacher_dir is None:  # option errors first (unknown names: KeyError)
        raise OptionError(f"distillation method {cfg.distill.method!r} needs a teacher folder",
                          hint="pass --teacher, or use --method nokd")
    option_problem = (method_name_problem(cfg)
                      or distill_window_problem(cfg.distill.from_epoch, cfg.distill.until_epoch)
                      or ring_problem(cfg.train.ring_weight, cfg.train.ring_radius))
    if option_problem:
        raise OptionError(option_problem)
    if preflight:
        preflight_distill(cfg, teacher_dir, out_dir, resume=resume)  # every input checked before anything is written
    return run_unless_complete(
        "student", cfg, out_dir, resume, STUDENT_WEIGHTS_FILE, progress=progress,
        pipeline=lambda: _distill_student(cfg, teacher_dir, out_dir, resume=resume, progress=progress))


def _distill_student(cfg: ExperimentConfig, teacher_dir: PathLike | None, out_dir: PathLike, resume: bool = True,
                    method: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The pipeline itself, once the preflight passed and the folder is locked (see :func:`distill_student`)."""
    from distilvpr_lib.losses.distiller import Distiller
    from distilvpr_lib.models import build_student

    if method is not None:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, method=method))
    started = time.time()
    distiller = Distiller(cfg.distill)  # validates method and term names before any work
    use_distiller = bool(distiller.weights)
    fingerprint = run_dataset_fingerprint(cfg)
    out_dir, ctx = start_run(cfg, out_dir, resume, dataset_fingerprint=fingerprint)
    device = ctx.device
    progress = progress and ctx.is_main
    benchmark = load_benchmark(cfg)
    check_benchmark(benchmark, cfg, need_images=True)

    cache = None
    if teacher_dir is not None and (use_distiller or (Path(teacher_dir) / cache_file_name(
            cfg.train.clean_teacher_cache, cfg.train.seed, cfg.distill.teacher_head)).is_file()):
        # never touches the training's random generators: the same weights whether it is read or built
        cache = get_teacher_cache(teacher_dir, cfg, benchmark, device, progress=progress, out_dir=out_dir,
                                  distributed=ctx, dataset_fingerprint=fingerprint)
        if use_distiller and cache.dim != cfg.model.student_dim and not distiller.dimension_free:
            raise ValueError(
                f"student_dim={cfg.model.student_dim} but the teacher embeddings in {cache.metadata.get('path')} have "
                f"D={cache.dim}; the distillation terms compare (B, D) matrices, so set model.student_dim={cache.dim}")

    student = build_student(cfg.model).to(device)
    optimizer = build_optimizer(student_parameter_groups(student, cfg.train), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    # The student sees images only: skip the (unused) cloud augmentation work.
    if cfg.data.image_cache and not ctx.is_distributed:
        loader = make_cached_student_loader(benchmark, cfg, progress, out_dir=out_dir)
    else:
        loader = make_training_loader(benchmark, cfg, ctx, data_cfg=dataclasses.replace(cfg.data, augment_clouds=False))
    objective = StudentObjective(cfg.train, cache, distiller.to(device) if use_distiller else None,
                                 curvature=cfg.distill.curvature, distill_until=cfg.distill.until_epoch,
                                 distill_from=cfg.distill.from_epoch)
    validate = None
    if cfg.train.use_validation_split:
        def validate(m: nn.Module) -> "RetrievalResults":
            return evaluate_split(m, benchmark, "validation", cfg, device)
    terms = ", ".join(f"{k}={v:g}" for k, v in distiller.weights.items()) or "none"
    if cfg.train.ring_weight:
        terms += f"; ring term {cfg.train.ring_weight:g} at radius {cfg.train.ring_radius:g}"
    say(f"student ({cfg.distill.method}): distillation terms {terms}; {len(benchmark.training_tuples)} training "
        f"sub-maps, {len(loader)} batches/epoch, {cfg.train.epochs} epochs on {device}{describe_world(ctx)} "
        f"-> {out_dir}", progress)
    trainer = Trainer(student, objective, optimizer, scheduler, loader, cfg.train, out_dir, validate=validate,
                      device=device, fingerprint=config_fingerprint(cfg), progress=progress,
                      distributed=ctx if ctx.is_distributed else None, run_record=run_record(cfg, fingerprint))
    history = trainer.fit(resume=resume)
    if not ctx.is_main:  # rank 0 selects, tests and writes
        metrics_from_main = ctx.broadcast_object(None)
        shutdown_distributed(ctx)
        return metrics_from_main

    student.load_state_dict(load_weights(trainer.best_weights, map_location=device))
    save_weights(out_dir / STUDENT_WEIGHTS_FILE, student.state_dict())
    test_results = evaluate_split(student, benchmark, "test", cfg, device, progress=progress)
    test_results.save(out_dir / TEST_RESULTS_FILE)

    norms: dict[str, Any] = {"student": {"mean": _last_stat(history, "student_norm_mean"),
                                         "max": _last_stat(history, "student_norm_max")}}
    if cache is not None:
        norms["teacher"] = cache.norm_stats()
    record = RunMetrics(
        kind="student", method=cfg.distill.method, profile=cfg.profile, seed=cfg.train.seed, device=str(device),
        cpu_threads=torch.get_num_threads(), precision=trainer.precision, dataset_dir=str(cfg.data.dataset_dir),
        dataset_fingerprint=fingerprint, history=history_metrics(history), test=retrieval_summary(test_results),
        loss_weights={STUDENT_TASK_TERM: float(cfg.train.student_task_weight),
                      **({RING_TERM: float(cfg.train.ring_weight)} if cfg.train.ring_weight else {}),
                      **distiller.weights},
        embedding_norms=norms, wall_time_s=round(time.time() - started, 3),
        files={"config": CONFIG_FILE, "weights": STUDENT_WEIGHTS_FILE, "test_results": TEST_RESULTS_FILE,
               "tensorboard": "tensorboard",
               **({"checkpoint": "checkpoints/last.pt"} if cfg.train.keep_checkpoints else {})},
        world_size=ctx.world_size if ctx.is_distributed else None,
        extra={"teacher_dir": None if teacher_dir is None else str(teacher_dir),
               "teacher_cache": None if cache is None else {"file": cache.metadata.get("path"),
                                                            "cache_key": cache.metadata.get("cache_key")}})
    metrics = finish_run(f"student ({cfg.distill.method})", record, cfg, out_dir, progress)
    ctx.broadcast_object(metrics)
    shutdown_distributed(ctx)
    return metrics


__all__ = ["distill_student"]
