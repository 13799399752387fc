"""Teacher and student runs end to end: config -> data -> model -> training -> test -> files.

:func:`train_teacher` writes a teacher folder ``teacher_weights/<name>/``::

    config.json         the resolved ExperimentConfig
    teacher.pt          the selected weights (bare state_dict)
    metrics.json        per-epoch losses, validation summaries, best epoch, test summary, ...
    test_results.npz    the selected teacher's RetrievalResults on the test split (browser input)
    teacher_cache.pt    teacher embeddings of every training sub-map (see engine.teacher_cache)
    checkpoints/        last.pt (exact resume) and best.pt
    tensorboard/        scalars

:func:`distill_student` writes a run folder ``runs/<name>/`` with the same files, ``student.pt``
instead of ``teacher.pt`` and no cache. It reads the teacher's cache (building it once if it is
missing or stale) and never runs the teacher during training.

Selection is on the **validation** split, the report on the **test** split (read once, after
training). Both functions resume from ``checkpoints/last.pt`` by default; when training is
already complete they only redo the (cheap, deterministic) final stage.

Under ``torchrun`` (``WORLD_SIZE > 1``) the same functions run on every rank
(:mod:`distilvpr_lib.engine.distributed`): the process group is initialised from the environment,
training is data-parallel on the global batch, rank 0 alone writes every file and evaluates, the teacher
cache is a sharded forward pass gathered on every rank, and every rank returns rank 0's metrics.

``metrics.json`` schema (all recalls in percent)::

    kind: "teacher" | "student";  method: "teacher" | distillation preset;  profile, seed, device
    dataset_dir, teacher_dir (student), status: "complete"
    epochs: [{epoch, lr: {group: lr}, losses: {term: mean, total: mean}, stats: {...},
              batches, skipped_batches, seconds, validation: {AR@1, AR@5, AR@10, AR@1%,
              per_run_AR@1: {run: AR@1}, seconds} | null}]
    best_epoch, selection (the rule), validation (summary of the best epoch | null)
    test: {AR@1, AR@5, AR@10, AR@1%, per_run_AR@1: {run: AR@1}}
    final_losses: {term: last epoch's mean, total}
    loss_weights: {term: effective weight}
    embedding_norms: {student: {mean, max}, teacher: {mean, max}}   (raw L2 norms)
    wall_time_s (this call), train_seconds (sum over epochs, across resumes), seconds_per_epoch
    files: {name: path relative to the folder}
    world_size (distributed runs only): number of processes
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.formats import atomic_write
from distilvpr_lib.engine.checkpoint import LAST_CHECKPOINT_NAME, file_sha256, load_weights, save_weights
from distilvpr_lib.engine.distributed import (
    DistributedContext,
    broadcast_module_state,
    init_distributed,
    shutdown_distributed,
)
from distilvpr_lib.engine.seeding import configure_determinism, seed_everything
from distilvpr_lib.engine.teacher_cache import (
    TeacherCache,
    build_teacher_cache,
    cache_file_name,
    model_config_hash,
)
from distilvpr_lib.engine.trainer import (
    SELECTION_RULE,
    STUDENT_TASK_TERM,
    StudentObjective,
    TeacherObjective,
    Trainer,
    TrainingHistory,
    build_optimizer,
    build_scheduler,
    config_fingerprint,
    resolve_device,
    retrieval_summary,
    student_parameter_groups,
    teacher_parameter_groups,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.evaluate import RetrievalResults

PathLike = str | os.PathLike

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
TEACHER_WEIGHTS_FILE = "teacher.pt"
STUDENT_WEIGHTS_FILE = "student.pt"
TEST_RESULTS_FILE = "test_results.npz"


# ---------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------
def write_json(path: PathLike, obj: Any) -> Path:
    """Write strict JSON atomically (NaN/inf become null)."""
    path = Path(path)
    with atomic_write(path, "w") as handle:
        handle.write(json.dumps(_json_safe(obj), indent=2, sort_keys=False, allow_nan=False))
        handle.write("\n")
    return path


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return _json_safe(obj.item())
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        try:
            return _json_safe(obj.item())
        except (TypeError, ValueError):
            pass
    return obj


def load_benchmark(cfg: ExperimentConfig) -> "Benchmark":
    """Load ``cfg.data.dataset_dir`` (with ``cfg.data.image_dir`` and ``cfg.data.layout``)."""
    from distilvpr_lib.data.benchmark import Benchmark

    return Benchmark.load(cfg.data.dataset_dir, image_dir=cfg.data.image_dir, layout=cfg.data.layout)


def evaluate_split(model: nn.Module, benchmark: "Benchmark", split: str, cfg: ExperimentConfig,
                   device: torch.device, progress: bool = False) -> "RetrievalResults":
    """The PointNetVLAD protocol on one split (``engine.embed.evaluate_model``) with the run's settings."""
    from distilvpr_lib.engine import embed

    return embed.evaluate_model(model, benchmark, split=split, data_cfg=cfg.data,
                                batch_size=cfg.train.eval_batch_size, device=device,
                                normalize=cfg.train.eval_normalize, progress=progress)


def _check_benchmark(benchmark: "Benchmark", cfg: ExperimentConfig, need_images: bool) -> None:
    where = benchmark.dataset_dir
    if not benchmark.training_tuples:
        raise ValueError(f"{where}: no training tuples (training_queries_baseline.pickle); cannot train")
    if need_images and not benchmark.has_images:
        raise ValueError(f"{where}: the benchmark has no images (no LiDAR-to-image index); both models need images")
    if not benchmark.has_split("test"):
        raise ValueError(f"{where}: no test split (evaluation pickles) to report on")
    if cfg.train.use_validation_split and not benchmark.has_split("validation"):
        raise ValueError(
            f"{where}: no validation split for model selection (validation_evaluation_*.pickle); build it with "
            "distilvpr_lib.data.splits.build_oxford_benchmark, or set train.use_validation_split=false "
            "(then the last epoch is kept)")


def _make_loader(benchmark: "Benchmark", cfg: ExperimentConfig, ctx: DistributedContext,
                 data_cfg: Any | None = None) -> torch.utils.data.DataLoader:
    """The training loader: positive-pair batches (this rank's slices in distributed runs).

    ``num_workers`` are per process; ``pin_memory`` only on CUDA; ``persistent_workers`` when configured
    and there are workers.
    """
    from torch.utils.data import DataLoader

    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset
    from distilvpr_lib.data.sampler import DistributedPositivePairBatchSampler, PositivePairBatchSampler

    data_cfg = data_cfg or cfg.data
    dataset = TrainingDataset(benchmark, data_cfg, augment=True)
    sampler: PositivePairBatchSampler
    if ctx.is_distributed:
        sampler = DistributedPositivePairBatchSampler(benchmark.training_tuples, cfg.train.batch_size,
                                                      seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size)
    else:
        sampler = PositivePairBatchSampler(benchmark.training_tuples, cfg.train.batch_size, seed=cfg.train.seed)
    extra: dict[str, Any] = {}
    if data_cfg.num_workers > 0 and getattr(data_cfg, "persistent_workers", False):
        extra["persistent_workers"] = True
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=make_collate_fn(benchmark.training_tuples, data_cfg.quantization_size),
                      num_workers=data_cfg.num_workers, pin_memory=ctx.device.type == "cuda", **extra)


def _world(ctx: DistributedContext) -> str:
    return f" x {ctx.world_size} processes ({ctx.backend})" if ctx.is_distributed else ""


def _start(cfg: ExperimentConfig, out_dir: PathLike, resume: bool) -> tuple[Path, DistributedContext]:
    out_dir = Path(out_dir)
    config_path = out_dir / CONFIG_FILE
    if resume and (out_dir / "checkpoints" / LAST_CHECKPOINT_NAME).is_file() and config_path.is_file():
        # Refuse before overwriting config.json: the folder holds a run of another configuration.
        previous = ExperimentConfig.load(config_path)
        if config_fingerprint(previous) != config_fingerprint(cfg):
            raise ValueError(
                f"{out_dir}: holds a checkpoint of another configuration (see {config_path}); "
                "resume=False starts over, or use another output folder")
    ctx = init_distributed(cfg.train.device, cfg.train.distributed_backend, cfg.train.distributed_timeout_s)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    configure_determinism(cfg.train.deterministic)
    if ctx.is_main:
        write_json(out_dir / CONFIG_FILE, cfg.to_dict())
    return out_dir, ctx


def _say(message: str, progress: bool) -> None:
    if progress:
        from tqdm.auto import tqdm

        tqdm.write(message)


def _history_metrics(history: TrainingHistory) -> dict[str, Any]:
    best = next((e for e in history.epochs if e["epoch"] == history.best_epoch), None)
    train_seconds = sum(float(e.get("seconds", 0.0)) + float((e.get("validation") or {}).get("seconds", 0.0))
                        for e in history.epochs)
    epoch_seconds = [float(e["seconds"]) for e in history.epochs]
    return {
        "epochs": history.epochs,
        "best_epoch": history.best_epoch,
        "selection": SELECTION_RULE if any(e.get("validation") for e in history.epochs)
        else "last epoch (no validation split)",
        "validation": (best or {}).get("validation"),
        "final_losses": dict(history.last["losses"]) if history.last else {},
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(sum(epoch_seconds) / len(epoch_seconds), 3) if epoch_seconds else None,
    }


def _last_stat(history: TrainingHistory, name: str) -> float | None:
    if not history.last:
        return None
    value = history.last["stats"].get(name)
    return None if value is None else float(value)


def _print_summary(kind: str, metrics: Mapping[str, Any], out_dir: Path, progress: bool) -> None:
    test = metrics.get("test") or {}
    parts = "  ".join(f"{k}={v:.2f}" for k, v in test.items() if k.startswith("AR@") and v is not None)
    _say(f"{kind}: best epoch {metrics.get('best_epoch')} ({metrics.get('selection')}); test {parts}; "
         f"wrote {out_dir}", progress)


# ---------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------
def train_teacher(cfg: ExperimentConfig, out_dir: PathLike, resume: bool = True,
                  progress: bool = True) -> dict[str, Any]:
    """Train the multi-modal teacher, select it on validation, report it on test, cache its embeddings.

    Args:
        cfg: resolved configuration (``profile_config`` + ``apply_overrides``); seeds with ``cfg.train.seed``.
        out_dir: the teacher folder (``teacher_weights/<name>``), created.
        resume: continue from ``checkpoints/last.pt`` when present (``False`` starts over).
        progress: tqdm bars and per-epoch lines.

    Returns:
        The metrics dict written to ``metrics.json`` (schema in the module docstring).
    """
    from distilvpr_lib.models import build_teacher

    started = time.time()
    out_dir, ctx = _start(cfg, out_dir, resume)
    device = ctx.device
    progress = progress and ctx.is_main
    benchmark = load_benchmark(cfg)
    _check_benchmark(benchmark, cfg, need_images=True)
    model = build_teacher(cfg.model).to(device)
    optimizer = build_optimizer(teacher_parameter_groups(model, cfg.train), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    loader = _make_loader(benchmark, cfg, ctx)
    validate = None
    if cfg.train.use_validation_split:
        def validate(m: nn.Module) -> "RetrievalResults":
            return evaluate_split(m, benchmark, "validation", cfg, device)
    _say(f"teacher: {len(benchmark.training_tuples)} training sub-maps, {len(loader)} batches/epoch, "
         f"{cfg.train.epochs} epochs on {device}{_world(ctx)} -> {out_dir}", progress)
    trainer = Trainer(model, TeacherObjective(cfg.train), optimizer, scheduler, loader, cfg.train, out_dir,
                      validate=validate, device=device, fingerprint=config_fingerprint(cfg), progress=progress,
                      distributed=ctx if ctx.is_distributed else None)
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
    cache = build_teacher_cache(
        model, benchmark, cfg.data, cfg.train.eval_batch_size, device,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed, progress=progress,
        metadata={"teacher_config_hash": model_config_hash(cfg.model),
                  "teacher_weights_sha256": weights_sha},
        distributed=ctx if ctx.is_distributed else None)
    cache_name = cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed)
    if not ctx.is_main:
        metrics_from_main = ctx.broadcast_object(None)
        shutdown_distributed(ctx)
        return metrics_from_main
    cache.save(out_dir / cache_name)

    metrics: dict[str, Any] = {
        "kind": "teacher",
        "method": "teacher",
        "profile": cfg.profile,
        "seed": cfg.train.seed,
        "device": str(device),
        "dataset_dir": str(cfg.data.dataset_dir),
        "status": "complete",
        **_history_metrics(history),
        "test": retrieval_summary(test_results),
        "loss_weights": dict(zip(("triplet_embedding", "triplet_cloud_embedding", "triplet_image_embedding"),
                                 (float(w) for w in cfg.train.teacher_loss_weights))),
        "embedding_norms": {"teacher": cache.norm_stats()},
        "teacher_cache": {"file": cache_name, "count": len(cache), "dim": cache.dim,
                          "clean": cfg.train.clean_teacher_cache},
        "wall_time_s": round(time.time() - started, 3),
        "files": {"config": CONFIG_FILE, "weights": TEACHER_WEIGHTS_FILE, "test_results": TEST_RESULTS_FILE,
                  "teacher_cache": cache_name, "checkpoint": "checkpoints/last.pt", "tensorboard": "tensorboard"},
    }
    if ctx.is_distributed:
        metrics["world_size"] = ctx.world_size
    write_json(out_dir / METRICS_FILE, metrics)
    _print_summary("teacher", metrics, out_dir, progress)
    ctx.broadcast_object(metrics)
    shutdown_distributed(ctx)
    return metrics


# ---------------------------------------------------------------------------
# Teacher cache for the student
# ---------------------------------------------------------------------------
def load_run_config(run_dir: PathLike) -> ExperimentConfig:
    """The ``config.json`` of a teacher folder or student run."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run configuration not found (is {run_dir} a teacher folder or run folder?)")
    return ExperimentConfig.load(path)


def _without_pretrained(model_cfg: Any) -> Any:
    """The model config with ``pretrained_image_weights=None``: a saved model needs no ImageNet file to load."""
    return dataclasses.replace(model_cfg, pretrained_image_weights=None)


def load_teacher(teacher_dir: PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ExperimentConfig]:
    """Build the teacher of a teacher folder from its ``config.json`` and load ``teacher.pt`` (strict)."""
    from distilvpr_lib.models import build_teacher

    teacher_dir = Path(teacher_dir)
    teacher_cfg = load_run_config(teacher_dir)
    model = build_teacher(_without_pretrained(teacher_cfg.model))
    model.load_state_dict(load_weights(teacher_dir / TEACHER_WEIGHTS_FILE))
    return model.to(device).eval(), teacher_cfg


def _cache_is_current(cache: TeacherCache, teacher_dir: Path, benchmark: "Benchmark") -> str | None:
    """``None`` when the cache fits the teacher's weights and the training set, else the reason."""
    weights = teacher_dir / TEACHER_WEIGHTS_FILE
    recorded = cache.metadata.get("teacher_weights_sha256")
    if recorded and weights.is_file() and recorded != file_sha256(weights):
        return f"{weights} changed since the cache was built"
    missing = cache.missing(t.rel_scan_filepath for t in benchmark.training_tuples.values())
    if missing:
        return f"{len(missing)} training sub-maps are not in the cache (another dataset?), e.g. {missing[:2]}"
    return None


def _read_current_cache(candidates: list[Path], teacher_dir: Path, benchmark: "Benchmark",
                        progress: bool) -> TeacherCache | None:
    for path in candidates:
        if path.is_file():
            cache = TeacherCache.load(path)
            reason = _cache_is_current(cache, teacher_dir, benchmark)
            if reason is None:
                return cache
            _say(f"teacher cache {path} is stale ({reason}); rebuilding", progress)
    return None


def get_teacher_cache(teacher_dir: PathLike, cfg: ExperimentConfig, benchmark: "Benchmark",
                      device: torch.device, progress: bool = True, out_dir: PathLike | None = None,
                      distributed: DistributedContext | None = None) -> TeacherCache:
    """The teacher cache the student run needs: read it, or (missing or stale) build it once and save it.

    The file is ``teacher_cache.pt`` (clean, ``cfg.train.clean_teacher_cache``) or
    ``teacher_cache_augmented_seed<seed>.pt`` in the teacher folder (in ``out_dir`` when the teacher
    folder is read-only). Only building needs the teacher's forward pass and sparse backend.

    Distributed (``distributed`` with several ranks, every rank calls this): rank 0 reads the cache and
    sends it to the others; when it must be built, every rank runs its shard (each needs the teacher
    folder) and rank 0 saves it.
    """
    teacher_dir = Path(teacher_dir)
    name = cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed)
    candidates = [teacher_dir / name] + ([Path(out_dir) / name] if out_dir is not None else [])
    ctx = distributed if distributed is not None and distributed.is_distributed else None
    if ctx is None:
        found = _read_current_cache(candidates, teacher_dir, benchmark, progress)
        if found is not None:
            return found
    else:
        payload = None
        if ctx.is_main:
            found = _read_current_cache(candidates, teacher_dir, benchmark, progress)
            payload = None if found is None else (found.rel_paths, found.embeddings, found.metadata)
        payload = ctx.broadcast_object(payload)
        if payload is not None:
            return TeacherCache(*payload)
    if not (teacher_dir / TEACHER_WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{teacher_dir / TEACHER_WEIGHTS_FILE}: teacher weights not found and no teacher cache "
                                f"{teacher_dir / name}; train the teacher first (distilvpr train-teacher)")
    teacher, teacher_cfg = load_teacher(teacher_dir, device)
    cache = build_teacher_cache(
        teacher, benchmark, cfg.data, cfg.train.eval_batch_size, device,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed, progress=progress,
        metadata={"teacher_config_hash": model_config_hash(teacher_cfg.model),
                  "teacher_weights_sha256": file_sha256(teacher_dir / TEACHER_WEIGHTS_FILE)},
        distributed=ctx)
    del teacher
    if ctx is not None and not ctx.is_main:
        return cache
    try:
        cache.save(teacher_dir / name)
    except OSError:
        if out_dir is None:
            raise
        cache.save(Path(out_dir) / name)
    return cache


# ---------------------------------------------------------------------------
# Student
# ---------------------------------------------------------------------------
def distill_student(cfg: ExperimentConfig, teacher_dir: PathLike | None, out_dir: PathLike, resume: bool = True,
                    method: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Train the image-only student with the task loss plus the distillation terms of ``cfg.distill``.

    Args:
        cfg: resolved configuration; ``cfg.distill.method`` names the preset (``nokd``, ``distilvpr``, ...)
            and ``cfg.distill.terms`` overrides term weights.
        teacher_dir: a teacher folder written by :func:`train_teacher` (may be ``None`` for ``nokd``).
        out_dir: the run folder (``runs/<name>``), created.
        resume: continue from ``checkpoints/last.pt`` when present.
        method: shorthand that overrides ``cfg.distill.method``.
        progress: tqdm bars and per-epoch lines.

    Returns:
        The metrics dict written to ``metrics.json`` (schema in the module docstring).
    """
    from distilvpr_lib.losses.distiller import Distiller
    from distilvpr_lib.models import build_student

    if method is not None:
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill, method=method))
    started = time.time()
    distiller = Distiller(cfg.distill)  # validates method and term names before any work
    use_distiller = bool(distiller.weights)
    if use_distiller and teacher_dir is None:
        raise ValueError(f"distillation method {cfg.distill.method!r} needs a teacher folder")
    out_dir, ctx = _start(cfg, out_dir, resume)
    device = ctx.device
    progress = progress and ctx.is_main
    benchmark = load_benchmark(cfg)
    _check_benchmark(benchmark, cfg, need_images=True)

    cache = None
    if teacher_dir is not None and (use_distiller or (Path(teacher_dir) / cache_file_name(
            cfg.train.clean_teacher_cache, cfg.train.seed)).is_file()):
        cache = get_teacher_cache(teacher_dir, cfg, benchmark, device, progress=progress, out_dir=out_dir,
                                  distributed=ctx)
        if use_distiller and cache.dim != cfg.model.student_dim:
            raise ValueError(
                f"student_dim={cfg.model.student_dim} but the teacher embeddings in {cache.metadata.get('path')} have "
                f"D={cache.dim}; the distillation terms compare (B, D) matrices, so set model.student_dim={cache.dim}")

    student = build_student(cfg.model).to(device)
    optimizer = build_optimizer(student_parameter_groups(student, cfg.train), cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    # The student sees images only: skip the (unused) cloud augmentation work.
    loader = _make_loader(benchmark, cfg, ctx, data_cfg=dataclasses.replace(cfg.data, augment_clouds=False))
    objective = StudentObjective(cfg.train, cache, distiller.to(device) if use_distiller else None)
    validate = None
    if cfg.train.use_validation_split:
        def validate(m: nn.Module) -> "RetrievalResults":
            return evaluate_split(m, benchmark, "validation", cfg, device)
    terms = ", ".join(f"{k}={v:g}" for k, v in distiller.weights.items()) or "none"
    _say(f"student ({cfg.distill.method}): distillation terms {terms}; {len(benchmark.training_tuples)} training "
         f"sub-maps, {len(loader)} batches/epoch, {cfg.train.epochs} epochs on {device}{_world(ctx)} -> {out_dir}",
         progress)
    trainer = Trainer(student, objective, optimizer, scheduler, loader, cfg.train, out_dir, validate=validate,
                      device=device, fingerprint=config_fingerprint(cfg), progress=progress,
                      distributed=ctx if ctx.is_distributed else None)
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
    metrics: dict[str, Any] = {
        "kind": "student",
        "method": cfg.distill.method,
        "profile": cfg.profile,
        "seed": cfg.train.seed,
        "device": str(device),
        "dataset_dir": str(cfg.data.dataset_dir),
        "teacher_dir": None if teacher_dir is None else str(teacher_dir),
        "status": "complete",
        **_history_metrics(history),
        "test": retrieval_summary(test_results),
        "loss_weights": {STUDENT_TASK_TERM: float(cfg.train.student_task_weight), **distiller.weights},
        "embedding_norms": norms,
        "wall_time_s": round(time.time() - started, 3),
        "files": {"config": CONFIG_FILE, "weights": STUDENT_WEIGHTS_FILE, "test_results": TEST_RESULTS_FILE,
                  "checkpoint": "checkpoints/last.pt", "tensorboard": "tensorboard"},
    }
    if ctx.is_distributed:
        metrics["world_size"] = ctx.world_size
    write_json(out_dir / METRICS_FILE, metrics)
    _print_summary(f"student ({cfg.distill.method})", metrics, out_dir, progress)
    ctx.broadcast_object(metrics)
    shutdown_distributed(ctx)
    return metrics


# ---------------------------------------------------------------------------
# Evaluating a finished folder
# ---------------------------------------------------------------------------
def load_model_from_dir(model_dir: PathLike, device: torch.device | str = "cpu") -> tuple[nn.Module, ExperimentConfig, str]:
    """Build and load the model of a teacher folder (``teacher.pt``) or student run (``student.pt``).

    Returns:
        ``(model in eval mode, its config, "teacher" | "student")``.
    """
    from distilvpr_lib.models import build_student, build_teacher

    model_dir = Path(model_dir)
    cfg = load_run_config(model_dir)
    model_cfg = _without_pretrained(cfg.model)  # the weights file holds every parameter
    if (model_dir / STUDENT_WEIGHTS_FILE).is_file():
        kind, model, weights = "student", build_student(model_cfg), model_dir / STUDENT_WEIGHTS_FILE
    elif (model_dir / TEACHER_WEIGHTS_FILE).is_file():
        kind, model, weights = "teacher", build_teacher(model_cfg), model_dir / TEACHER_WEIGHTS_FILE
    else:
        raise FileNotFoundError(f"{model_dir}: neither {STUDENT_WEIGHTS_FILE} nor {TEACHER_WEIGHTS_FILE} found")
    model.load_state_dict(load_weights(weights))
    return model.to(device).eval(), cfg, kind


def evaluate_run(model_dir: PathLike, dataset_dir: PathLike | None = None, split: str = "test",
                 device: str = "auto", image_dir: PathLike | None = None, progress: bool = True,
                 results_path: PathLike | None = None) -> tuple[dict[str, Any], "RetrievalResults"]:
    """Evaluate a teacher folder or student run on a split of a benchmark.

    Args:
        model_dir: folder with ``config.json`` and ``teacher.pt`` or ``student.pt``.
        dataset_dir: benchmark folder (default: the one in the folder's config).
        split: ``"test"`` or ``"validation"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        image_dir: image root override.
        results_path: where to save the RetrievalResults (``.npz``/``.json``), optional.

    Returns:
        ``(summary dict, RetrievalResults)``; the summary has AR@1/5/10/1% and per-run AR@1.
    """
    torch_device = resolve_device(device)
    model, cfg, kind = load_model_from_dir(model_dir, torch_device)
    overrides = {}
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(dataset_dir)
    if image_dir is not None:
        overrides["image_dir"] = str(image_dir)
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **overrides))
    benchmark = load_benchmark(cfg)
    results = evaluate_split(model, benchmark, split, cfg, torch_device, progress=progress)
    if results_path is not None:
        results.save(results_path)
    summary = {"kind": kind, "split": split, "model_dir": str(model_dir), **retrieval_summary(results)}
    return summary, results


# ---------------------------------------------------------------------------
# Per-head evaluation of a teacher (the modality gap)
# ---------------------------------------------------------------------------
#: Teacher output entry -> row label of :func:`evaluate_heads`.
TEACHER_HEADS: dict[str, str] = {"embedding": "fused", "cloud_embedding": "cloud-only",
                                 "image_embedding": "image-only"}
#: Columns of :func:`evaluate_heads` (recalls in percent).
HEAD_COLUMNS: tuple[str, ...] = ("AR@1", "AR@5", "AR@10", "AR@25", "AR@1%")


class _ConcatenatedHeads(nn.Module):
    """Wraps a model so one forward returns ``{"heads": cat(out[k] for k in keys)}`` (B, sum D_k)."""

    def __init__(self, model: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.keys = keys
        self.dims: dict[str, int] = {}

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        out = self.model(batch)
        missing = [k for k in self.keys if k not in out]
        if missing:
            raise KeyError(f"evaluate_heads: model output lacks {missing}; it has {sorted(out)}")
        self.dims = {k: int(out[k].shape[1]) for k in self.keys}
        return {"heads": torch.cat([out[k].float() for k in self.keys], dim=1)}


def head_split_embeddings(model: nn.Module, benchmark: "Benchmark", split: str, cfg: ExperimentConfig,
                          device: torch.device | str = "cpu",
                          keys: tuple[str, ...] = tuple(TEACHER_HEADS),
                          ) -> dict[str, tuple[list, list]]:
    """Embeddings of every head of ``model`` on a split, from ONE pass over the split's clouds.

    Returns:
        ``{key: (database_embeddings, query_embeddings)}`` with, per key, lists of (n_i, D_key) /
        (m_j, D_key) float32 arrays as :func:`distilvpr_lib.engine.embed.compute_split_embeddings`.
    """
    from distilvpr_lib.engine import embed

    wrapper = _ConcatenatedHeads(model, tuple(keys))
    database, query = embed.compute_split_embeddings(
        wrapper, benchmark, split=split, data_cfg=cfg.data, batch_size=cfg.train.eval_batch_size,
        device=torch.device(device), key="heads")
    if not wrapper.dims:
        raise ValueError(f"evaluate_heads: the {split} split of {benchmark.dataset_dir} has no clouds")
    bounds, start = {}, 0
    for key in keys:
        bounds[key] = (start, start + wrapper.dims[key])
        start += wrapper.dims[key]
    return {key: ([a[:, lo:hi] for a in database], [a[:, lo:hi] for a in query])
            for key, (lo, hi) in bounds.items()}


def evaluate_heads(model: nn.Module | PathLike, benchmark: "Benchmark | None" = None, split: str = "test",
                   cfg: ExperimentConfig | None = None, device: torch.device | str = "cpu",
                   embeddings: dict[str, tuple[list, list]] | None = None) -> "pd.DataFrame":
    """The PointNetVLAD protocol on the teacher's fused, cloud-only and image-only heads (the modality gap).

    Args:
        model: a teacher module (output dict with ``embedding``, ``cloud_embedding``, ``image_embedding``)
            or a teacher folder (``config.json`` + ``teacher.pt``).
        benchmark: the benchmark to evaluate on (default: the dataset of the config).
        split: ``"test"`` or ``"validation"``.
        cfg: the run's config (data settings, eval batch size, ``eval_normalize``); default: the folder's.
        device: where the model runs.
        embeddings: precomputed :func:`head_split_embeddings` output (skips the embedding pass).

    Returns:
        DataFrame indexed by head (``fused``, ``cloud-only``, ``image-only``) with columns
        ``AR@1, AR@5, AR@10, AR@25, AR@1%`` (percent) and ``dim``; all heads use the same protocol
        (every ordered run pair, exact AR@1%) and the same metric (``cfg.train.eval_normalize``).
    """
    import pandas as pd

    from distilvpr_lib.engine.embed import _run_name, split_run_names
    from distilvpr_lib.engine.evaluate import evaluate_retrieval

    if not isinstance(model, nn.Module):
        folder = model
        model, folder_cfg, kind = load_model_from_dir(folder, device)
        if kind != "teacher":
            raise ValueError(f"evaluate_heads: {folder} is a {kind} folder; per-head evaluation needs a teacher")
        cfg = folder_cfg if cfg is None else cfg
    if cfg is None:
        raise ValueError("evaluate_heads: give cfg when passing a model module")
    model = model.to(device)
    if benchmark is None:
        benchmark = load_benchmark(cfg)
    if embeddings is None:
        embeddings = head_split_embeddings(model, benchmark, split, cfg, device)
    database_sets, query_sets = benchmark.database_sets(split), benchmark.query_sets(split)
    names = split_run_names(benchmark, split)
    names += [_run_name(query_sets[j], j) for j in range(len(names), len(query_sets))]
    rows = {}
    for key, label in TEACHER_HEADS.items():
        if key not in embeddings:
            continue
        database, query = embeddings[key]
        results = evaluate_retrieval(database, query, query_sets, top_k=25, normalize=cfg.train.eval_normalize,
                                     database_sets=database_sets, run_names=names, keep_retrievals=False)
        row = {f"AR@{n}": results.recall_at(n) for n in (1, 5, 10, 25)}
        row["AR@1%"] = float(results.recall_at_1p)
        row["dim"] = int(database[0].shape[1]) if database else 0
        rows[label] = row
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "head"
    return frame
