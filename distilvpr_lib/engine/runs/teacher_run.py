"""The teacher pipeline: config -> data -> model -> training -> selection -> test -> cache -> teacher folder.

:func:`train_teacher` trains the multi-modal teacher (:class:`~distilvpr_lib.engine.train.objectives.TeacherObjective`,
:class:`~distilvpr_lib.engine.train.loop.Trainer`), keeps the epoch selected on the **validation** split, reports it
on the **test** split (read once, after training) and caches its embeddings of every training sub-map for the
student (:mod:`~distilvpr_lib.engine.runs.teacher_cache`). The folder's files and ``metrics.json`` schema are in
:mod:`~distilvpr_lib.engine.runs.run_folder`. It resumes from ``checkpoints/last.pt`` by default; when training is
already complete it only redoes the (cheap, deterministic) final stage.

Under ``torchrun`` (``WORLD_SIZE > 1``) it runs on every rank (:mod:`distilvpr_lib.engine.train.distributed`):
training is data-parallel on the global batch, rank 0 alone writes every file and evaluates, the teacher
cache is a sharded forward pass gathered on every rank, and every rank returns rank 0's metrics.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.files import file_sha256
from distilvpr_lib.engine.train.checkpoint import load_weights, save_weights
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.train.distributed import broadcast_module_state, shutdown_distributed
from distilvpr_lib.engine.evaluation.results import retrieval_summary
from distilvpr_lib.engine.train.loop import Trainer
from distilvpr_lib.engine.train.objectives import TeacherObjective
from distilvpr_lib.engine.train.optim import build_optimizer, build_scheduler, teacher_parameter_groups
from distilvpr_lib.engine.runs.run_evaluation import evaluate_split, load_benchmark
from distilvpr_lib.engine.runs.run_folder import (
    CONFIG_FILE,
    TEACHER_WEIGHTS_FILE,
    TEST_RESULTS_FILE,
    config_fingerprint,
)
from distilvpr_lib.engine.runs.run_setup import (
    check_benchmark,
    describe_world,
    history_metrics,
    make_training_loader,
    RunMetrics,
    finish_run,
    run_dataset_fingerprint,
    run_record,
    start_run,
)
from distilvpr_lib.engine.runs.teacher_cache import (
    build_teacher_cache,
    cache_file_name,
    model_config_hash,
    teacher_cache_key,
    teacher_cache_key_fields,
    training_image_size,
)

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.engine.evaluation.results import RetrievalResults

PathLike = str | os.PathLike


def train_teacher(cfg: ExperimentConfig, out_dir: PathLike, resume: bool = True,
                  progress: bool = True, preflight: bool = True) -> dict[str, Any]:
    """Train the multi-modal teacher, select it on validation, report it on test, cache its embeddings.

    Args:
        cfg: resolved configuration (``profile_config`` + ``apply_overrides``); seeds with ``cfg.train.seed``.
        out_dir: the teacher folder (``teacher_weights/<name>``), created.
        resume: continue from ``checkpoints/last.pt`` when present (``False`` starts over).
        progress: tqdm bars and per-epoch lines.
        preflight: check every input first (:func:`~distilvpr_lib.engine.runs.preflight.preflight_train_teacher`);
            ``False`` only when the caller has just run that check (the CLI does, before torch is imported).

    Returns:
        The metrics dict written to ``metrics.json`` (schema in the module docstring).
    """
    from distilvpr_lib.engine.runs.preflight import preflight_train_teacher
    from distilvpr_lib.engine.runs.run_guard import run_unless_complete

    if preflight:
        preflight_train_teacher(cfg, out_dir, resume=resume)  # every input checked before anything is written
    return run_unless_complete("teacher", cfg, out_dir, resume, TEACHER_WEIGHTS_FILE, progress=progress,
                               pipeline=lambda: _train_teacher(cfg, out_dir, resume=resume, progress=progress))


def _train_teacher(cfg: ExperimentConfig, out_dir: PathLike, resume: bool = True,
                  progress: bool = True) -> dict[str, Any]:
    """The pipeline itself, once the preflight passed and the folder is locked (see :func:`train_teacher`)."""
    from distilvpr_lib.models import build_teacher

    started = time.time()
    fingerprint = run_dataset_fingerprint(cfg)
    out_dir, ctx = start_run(cfg, out_dir, resume, dataset_fingerprint=fingerprint)
    device = ctx.device
    progress = progress and ctx.is_main
    benchmark = load_benchmark(cfg)
    check_benchmark(benchmark, cfg, need_images=True)
    model = build_teacher(cfg.model).to(device)
    optimizer = build_optimizer(teacher_parameter_groups(model, cfg.train), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    loader = make_training_loader(benchmark, cfg, ctx)
    validate = None
    if cfg.train.use_validation_split:
        def validate(m: nn.Module) -> "RetrievalResults":
            return evaluate_split(m, benchmark, "validation", cfg, device)
    say(f"teacher: {len(benchmark.training_tuples)} training sub-maps, {len(loader)} batches/epoch, "
        f"{cfg.train.epochs} epochs on {device}{describe_world(ctx)} -> {out_dir}", progress)
    trainer = Trainer(model, TeacherObjective(cfg.train), optimizer, scheduler, loader, cfg.train, out_dir,
                      validate=validate, device=device, fingerprint=config_fingerprint(cfg), progress=progress,
                      distributed=ctx if ctx.is_distributed else None, run_record=run_record(cfg, fingerprint))
    history = trainer.fit(resume=resume)

    # Final stage: selected weights -> teacher.pt, test evaluation (rank 0), cache (sharded over the ranks).
    if ctx.is_main:
        model.load_state_dict(load_weights(trainer.best_weights, map_location=device))
    broadcast_module_state(ctx, model)
    weights_sha = None
    if ctx.is_main:
        weights_path = save_weights(out_dir / TEACHER_WEIGHTS_FILE, model.state_dict())
        test_results = evaluate_split(model, benchmark, "test", cfg, device, progress=progress)
        test_results.save(out_dir / TEST_RESULTS_FILE)
        weights_sha = file_sha256(weights_path)
    weights_sha = ctx.broadcast_object(weights_sha)
    key_fields = teacher_cache_key_fields(
        teacher_weights_sha256=weights_sha, teacher_config_hash=model_config_hash(cfg.model), head="embedding",
        dataset_fingerprint=fingerprint, image_size=training_image_size(benchmark), data_cfg=cfg.data,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed)
    cache = build_teacher_cache(
        model, benchmark, cfg.data, cfg.train.eval_batch_size, device,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed, progress=progress,
        metadata={"teacher_config_hash": key_fields["teacher_config_hash"], "teacher_weights_sha256": weights_sha,
                  "cache_key": teacher_cache_key(key_fields), "key_fields": key_fields},
        distributed=ctx if ctx.is_distributed else None)
    cache_name = cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed)
    if not ctx.is_main:
        metrics_from_main = ctx.broadcast_object(None)
        shutdown_distributed(ctx)
        return metrics_from_main
    cache.save(out_dir / cache_name)

    record = RunMetrics(
        kind="teacher", method="teacher", profile=cfg.profile, seed=cfg.train.seed, device=str(device),
        cpu_threads=torch.get_num_threads(), precision=trainer.precision, dataset_dir=str(cfg.data.dataset_dir),
        dataset_fingerprint=fingerprint, history=history_metrics(history), test=retrieval_summary(test_results),
        loss_weights=dict(zip(("triplet_embedding", "triplet_cloud_embedding", "triplet_image_embedding"),
                              (float(w) for w in cfg.train.teacher_loss_weights))),
        embedding_norms={"teacher": cache.norm_stats()}, wall_time_s=round(time.time() - started, 3),
        files={"config": CONFIG_FILE, "weights": TEACHER_WEIGHTS_FILE, "test_results": TEST_RESULTS_FILE,
               "teacher_cache": cache_name, "tensorboard": "tensorboard",
               **({"checkpoint": "checkpoints/last.pt"} if cfg.train.keep_checkpoints else {})},
        world_size=ctx.world_size if ctx.is_distributed else None,
        extra={"teacher_cache": {"file": cache_name, "count": len(cache), "dim": cache.dim,
                                 "clean": cfg.train.clean_teacher_cache}})
    metrics = finish_run("teacher", record, cfg, out_dir, progress)
    ctx.broadcast_object(metrics)
    shutdown_distributed(ctx)
    return metrics


__all__ = ["train_teacher"]
