"""The teacher cache a student run reads: a saved one whose key matches, else built once and saved beside the others.

**Current** = the cache's recorded ``cache_key`` equals the key of what this run would compute
(:func:`~distilvpr_lib.engine.runs.teacher_cache.teacher_cache_key_fields`: the teacher's weights and
architecture, the head, the dataset's fingerprint — its pickles, image folder and files —, the image size, the
voxel size, and for the augmented cache its seed and augmentation settings), and it holds every training sub-map.

Where a cache is looked for, in this order: the teacher folder's own file (``teacher_cache.pt``, or
``teacher_cache_augmented_seed<seed>.pt``; see :func:`~distilvpr_lib.engine.runs.teacher_cache.cache_file_name`),
then ``teacher_cache-<key16>.pt`` in the teacher folder, then in the run folder. Where a new one is written:

* the student trains on the teacher's own dataset: the teacher folder's own file if it does not exist yet, else
  ``teacher_cache-<key16>.pt`` beside it — a file another run reads is never overwritten;
* on another dataset (another fingerprint): ``teacher_cache-<key16>.pt`` in the student's own run folder, so a
  teacher folder only ever holds caches of its own data;
* the teacher folder read-only: in the run folder.

Reading and building never touch the training's random generators (:func:`get_teacher_cache` runs under
:func:`~distilvpr_lib.engine.train.seeding.preserved_rng_state`, the teacher's construction included), so a run
that builds its cache trains the same weights as one that finds it. Only building needs the teacher's forward
pass and sparse backend. The cache itself (format, build) is :mod:`distilvpr_lib.engine.runs.teacher_cache`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.files import file_sha256
from distilvpr_lib.data.fingerprint import dataset_fingerprint as compute_dataset_fingerprint
from distilvpr_lib.data.fingerprint import short_fingerprint
from distilvpr_lib.engine.runs.run_folder import (
    CONFIG_FILE,
    METRICS_FILE,
    TEACHER_WEIGHTS_FILE,
    load_run_config,
    load_teacher,
)
from distilvpr_lib.engine.runs.teacher_cache import (
    HeadAsEmbedding,
    TeacherCache,
    build_teacher_cache,
    cache_file_name,
    describe_key_change,
    keyed_cache_file_name,
    model_config_hash,
    teacher_cache_key,
    teacher_cache_key_fields,
    training_image_size,
)
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.train.seeding import preserved_rng_state
from distilvpr_lib.errors import MissingCheckpointError

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.train.distributed import DistributedContext

PathLike = str | os.PathLike


def benchmark_fingerprint(benchmark: "Benchmark") -> str:
    """:func:`~distilvpr_lib.data.fingerprint.dataset_fingerprint` of a loaded benchmark's dataset and image folders."""
    return compute_dataset_fingerprint(benchmark.dataset_dir, benchmark.image_dir)


def wanted_cache_key(teacher_dir: PathLike, cfg: ExperimentConfig, benchmark: "Benchmark",
                     dataset_fingerprint: str) -> dict[str, Any]:
    """The key fields of the cache this run needs (:func:`teacher_cache_key_fields`), from the teacher folder's
    ``teacher.pt`` and ``config.json`` and the benchmark."""
    teacher_dir = Path(teacher_dir)
    teacher_cfg = load_run_config(teacher_dir)
    return teacher_cache_key_fields(
        teacher_weights_sha256=file_sha256(teacher_dir / TEACHER_WEIGHTS_FILE),
        teacher_config_hash=model_config_hash(teacher_cfg.model), head=cfg.distill.teacher_head,
        dataset_fingerprint=dataset_fingerprint, image_size=training_image_size(benchmark), data_cfg=cfg.data,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed)


def teacher_dataset_fingerprint(teacher_dir: PathLike) -> str | None:
    """The dataset fingerprint a teacher folder records (``metrics.json``'s ``dataset_fingerprint``), or ``None``
    for a folder that predates fingerprints or was imported."""
    teacher_dir = Path(teacher_dir)
    try:
        recorded = json.loads((teacher_dir / METRICS_FILE).read_text()).get("dataset_fingerprint")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) else None


def _same_dataset_as_teacher(teacher_dir: Path, cfg: ExperimentConfig, dataset_fingerprint: str) -> bool:
    """Whether the student trains on the dataset the teacher was trained on (by fingerprint; by resolved paths
    for a teacher folder that records none)."""
    recorded = teacher_dataset_fingerprint(teacher_dir)
    if recorded is not None:
        return recorded == dataset_fingerprint
    try:
        teacher_data = ExperimentConfig.load(teacher_dir / CONFIG_FILE).data
    except (OSError, ValueError, KeyError, TypeError):
        return False

    def resolved(path: str | None) -> Path | None:
        return None if path is None else Path(path).resolve()

    return (resolved(teacher_data.dataset_dir) == resolved(cfg.data.dataset_dir)
            and resolved(teacher_data.image_dir) == resolved(cfg.data.image_dir))


def _read_current_cache(candidates: list[Path], key: str, fields: dict[str, Any], benchmark: "Benchmark",
                        progress: bool) -> TeacherCache | None:
    """The first candidate whose recorded key is ``key`` and that holds every training sub-map."""
    wanted = [t.rel_scan_filepath for t in benchmark.training_tuples.values()]
    for path in candidates:
        if not path.is_file():
            continue
        cache = TeacherCache.load(path)
        if cache.metadata.get("cache_key") != key:
            say(f"teacher cache {path} was built from other inputs "
                f"({describe_key_change(cache.metadata.get('key_fields'), fields)}); not used", progress)
            continue
        missing = cache.missing(wanted)
        if missing:
            say(f"teacher cache {path} lacks {len(missing)} training sub-maps, e.g. {missing[:2]}; not used", progress)
            continue
        return cache
    return None


def _read_weightless_cache(teacher_dir: Path, name: str, benchmark: "Benchmark",
                           dataset_fingerprint: str) -> TeacherCache:
    """A teacher folder with a cache but no ``teacher.pt`` (an exported teacher): its cache, when it fits."""
    path = teacher_dir / name
    if not path.is_file():
        raise MissingCheckpointError("teacher weights not found and no teacher cache to use instead",
                                     path=teacher_dir / TEACHER_WEIGHTS_FILE,
                                     hint="train the teacher first (distilvpr train-teacher)")
    cache = TeacherCache.load(path)
    recorded = (cache.metadata.get("key_fields") or {}).get("dataset_fingerprint")
    if recorded is not None and recorded != dataset_fingerprint:
        raise MissingCheckpointError(
            f"the teacher cache {path.name} was built for another dataset (fingerprint {short_fingerprint(recorded)}, "
            f"this one {short_fingerprint(dataset_fingerprint)}) and there is no teacher.pt to rebuild it",
            path=teacher_dir, hint="use the teacher's dataset, or a teacher folder with its teacher.pt")
    missing = cache.missing(t.rel_scan_filepath for t in benchmark.training_tuples.values())
    if missing:
        raise MissingCheckpointError(
            f"the teacher cache {path.name} lacks {len(missing)} training sub-maps (another dataset?), e.g. "
            f"{missing[:2]}, and there is no teacher.pt to rebuild it", path=teacher_dir,
            hint="use the teacher's dataset, or a teacher folder with its teacher.pt")
    return cache


def cache_destination(teacher_dir: PathLike, cfg: ExperimentConfig, key: str, dataset_fingerprint: str,
                      out_dir: PathLike | None) -> Path:
    """Where a newly built cache is written (module docstring): never onto an existing file of the teacher folder."""
    teacher_dir = Path(teacher_dir)
    own = teacher_dir / cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed, cfg.distill.teacher_head)
    keyed = keyed_cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed, cfg.distill.teacher_head, key)
    if _same_dataset_as_teacher(teacher_dir, cfg, dataset_fingerprint) or out_dir is None:
        return teacher_dir / keyed if own.exists() else own
    return Path(out_dir) / keyed


def get_teacher_cache(teacher_dir: PathLike, cfg: ExperimentConfig, benchmark: "Benchmark",
                      device: torch.device, progress: bool = True, out_dir: PathLike | None = None,
                      distributed: DistributedContext | None = None,
                      dataset_fingerprint: str | None = None) -> TeacherCache:
    """The teacher cache the student run needs: a current one (read), or built once and saved (module docstring).

    Args:
        teacher_dir: the teacher folder (``teacher.pt``, ``config.json``, its caches).
        cfg: the student run's config (head, clean/augmented, seed, data settings).
        benchmark: the student's benchmark; the cache must hold its training sub-maps.
        device: where the teacher runs when the cache is built.
        out_dir: the student's run folder (caches of other datasets, or a read-only teacher folder).
        distributed: several ranks: rank 0 reads the cache and sends it to the others; when it must be built,
            every rank runs its shard (each needs the teacher folder) and rank 0 saves it.
        dataset_fingerprint: the benchmark's fingerprint when the caller has it (else computed).

    Returns:
        The cache; ``metadata["path"]`` names its file.

    Raises:
        MissingCheckpointError: no ``teacher.pt`` and no cache that fits.
    """
    with preserved_rng_state():  # reading or building: the training's random stream stays as it was
        return _get_teacher_cache(Path(teacher_dir), cfg, benchmark, device, progress, out_dir, distributed,
                                  dataset_fingerprint or benchmark_fingerprint(benchmark))


def _get_teacher_cache(teacher_dir: Path, cfg: ExperimentConfig, benchmark: "Benchmark", device: torch.device,
                       progress: bool, out_dir: PathLike | None, distributed: "DistributedContext | None",
                       dataset_fingerprint: str) -> TeacherCache:
    head = cfg.distill.teacher_head
    name = cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed, head)
    ctx = distributed if distributed is not None and distributed.is_distributed else None
    if not (teacher_dir / TEACHER_WEIGHTS_FILE).is_file():
        return _read_weightless_cache(teacher_dir, name, benchmark, dataset_fingerprint)
    fields = wanted_cache_key(teacher_dir, cfg, benchmark, dataset_fingerprint)
    key = teacher_cache_key(fields)
    keyed = keyed_cache_file_name(cfg.train.clean_teacher_cache, cfg.train.seed, head, key)
    candidates = [teacher_dir / name, teacher_dir / keyed] + ([Path(out_dir) / keyed] if out_dir is not None else [])
    if ctx is None:
        found = _read_current_cache(candidates, key, fields, benchmark, progress)
        if found is not None:
            return found
    else:
        payload = None
        if ctx.is_main:
            found = _read_current_cache(candidates, key, fields, benchmark, progress)
            payload = None if found is None else (found.rel_paths, found.embeddings, found.metadata)
        payload = ctx.broadcast_object(payload)
        if payload is not None:
            return TeacherCache(*payload)
    teacher, _ = load_teacher(teacher_dir, device)
    if head != "embedding":
        teacher = HeadAsEmbedding(teacher, head)
    cache = build_teacher_cache(
        teacher, benchmark, cfg.data, cfg.train.eval_batch_size, device,
        clean=cfg.train.clean_teacher_cache, seed=cfg.train.seed, progress=progress,
        metadata={"teacher_config_hash": fields["teacher_config_hash"],
                  "teacher_weights_sha256": fields["teacher_weights_sha256"],
                  "cache_key": key, "key_fields": fields},
        distributed=ctx)
    del teacher
    if ctx is not None and not ctx.is_main:
        return cache
    # another run (a side-by-side batch run on the same teacher) may have saved this key while we built it: its
    # file is then the cache, neither overwritten nor duplicated beside it
    found = _read_current_cache(candidates, key, fields, benchmark, False)
    if found is not None:
        say(f"teacher cache: another run saved {found.metadata.get('path')} meanwhile; using it", progress)
        return found
    target = cache_destination(teacher_dir, cfg, key, dataset_fingerprint, out_dir)
    try:
        cache.save(target)
    except OSError:
        if out_dir is None or target.parent == Path(out_dir):
            raise
        target = Path(out_dir) / keyed
        cache.save(target)
    say(f"teacher cache: built {target}", progress)
    cache.metadata["path"] = str(target)
    return cache


__all__ = ["benchmark_fingerprint", "cache_destination", "get_teacher_cache", "teacher_dataset_fingerprint",
           "wanted_cache_key"]
