"""The teacher cache a student run reads: the saved one when it is current, else built once and saved.

Current = recorded for the teacher's present weights (``teacher_weights_sha256`` of ``teacher.pt``) and holding
every training sub-map of the benchmark. Only building needs the teacher's forward pass and sparse backend.
The cache itself (format, build) is :mod:`distilvpr_lib.engine.runs.teacher_cache`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.files import file_sha256
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.runs.run_folder import TEACHER_WEIGHTS_FILE, load_teacher
from distilvpr_lib.engine.runs.teacher_cache import (HeadAsEmbedding, TeacherCache, build_teacher_cache, cache_file_name,
                                               model_config_hash)

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.train.distributed import DistributedContext

PathLike = str | os.PathLike


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
            say(f"teacher cache {path} is stale ({reason}); rebuilding", progress)
    return None


def get_teacher_cache(teacher_dir: PathLike, cfg: ExperimentConfig, benchmark: "Benchmark",
                      device: torch.device, progress: bool = True, out_dir: PathLike | None = None,
                      distributed: DistributedContext | None = None) -> TeacherCache:
    """The teacher cache the student run needs: read it, or (missing or stale) build it once and save it.

    The file is ``teacher_cache.pt`` (clean, ``cfg.train.clean_teacher_cache``) or
    ``teacher_cache_augmented_seed<seed>.pt`` (``_<head>`` added for ``cfg.distill.teacher_head`` other than the
    fused ``embedding``) in the teacher folder (in ``out_dir`` when the teacher
    folder is read-only). Only building needs the teacher's forward pass and sparse backend.

    Distributed (``distributed`` with several ranks, every rank calls this): rank 0 reads the cache and
    sends it to the others; when it must be built, every rank runs its shard (each needs the teacher
    folder) and rank 0 saves it.
    """
    teacher_dir = Path(teacher_dir)
    head = cfg.distill.teacher_head
    name = cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed, head)
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
    if head != "embedding":
        teacher = HeadAsEmbedding(teacher, head)
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


__all__ = ["get_teacher_cache"]
