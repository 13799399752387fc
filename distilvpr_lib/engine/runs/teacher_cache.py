"""The teacher embedding cache: one forward pass of the trained teacher over the training set.

Student training (docs/METHOD.md §5.3) never runs the teacher: it looks the teacher's embedding of
each training sub-map up by ``rel_path`` in this cache. So distillation needs neither the
teacher's forward pass nor the sparse-convolution backend, once the cache exists.

Two modes (``cfg.train.clean_teacher_cache``):

* **clean** (default): clouds and images without augmentation, so each target is the
  teacher's embedding of the sub-map itself;
* **reference** (``False``): the reference's quirk (docs/METHOD.md §8.1) — the training pipeline
  *with* its augmentations, visited once in sequential order after seeding with
  ``cfg.train.seed``, so each target is one frozen random view.

File format (``teacher_cache.pt``, read with ``torch.load(weights_only=True)``)::

    {"format": "distilvpr-teacher-cache/1",
     "embeddings": {rel_path: (D,) float32 tensor},     # rows of one shared storage
     "metadata": {"teacher_config_hash", "teacher_weights_sha256", "dataset_dir", "count",
                  "dim", "clean", "seed", "created",
                  "cache_key", "key_fields"}}               # what the cache depends on (below)

**The key.** A cache is valid only for what it was computed from: :func:`teacher_cache_key_fields` lists it —
the teacher's weights (SHA-256 of ``teacher.pt``) and architecture, the head, the dataset's content
(:func:`~distilvpr_lib.data.fingerprint.dataset_fingerprint` of the dataset folder *and* the image folder),
the training images' size, the voxel size, and for the augmented (reference) cache its seed and augmentation
settings — and :func:`teacher_cache_key` hashes it. A cache whose recorded ``cache_key`` differs is never
used, and never overwritten: the new one is written beside it as :func:`keyed_cache_file_name`
(``teacher_cache-<key16>.pt``), see :mod:`distilvpr_lib.engine.runs.student_cache`.

A student run gets its cache through :func:`distilvpr_lib.engine.runs.student_cache.get_teacher_cache`.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.data.collate import move_to_device
from distilvpr_lib.data.files import atomic_write
from distilvpr_lib.engine.train.seeding import preserved_rng_state, seed_everything
from distilvpr_lib.errors import CheckpointError, MissingCheckpointError, describe_torch_load_error

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DataConfig, ModelConfig
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.train.distributed import DistributedContext

PathLike = str | os.PathLike

CACHE_FORMAT: str = "distilvpr-teacher-cache/1"
#: File name of the clean cache inside a teacher folder.
CLEAN_CACHE_NAME: str = "teacher_cache.pt"


#: Teacher descriptors a cache can hold (``DistillConfig.teacher_head``).
TEACHER_CACHE_HEADS: tuple[str, ...] = ("embedding", "cloud_embedding", "image_embedding")


def cache_file_name(clean: bool, seed: int, head: str = "embedding") -> str:
    """``teacher_cache.pt`` for the clean cache, ``teacher_cache_augmented_seed<seed>.pt`` otherwise; a head
    other than the fused ``embedding`` adds ``_<head>`` before ``.pt``.

    Raises:
        KeyError: unknown head (lists the known ones).
    """
    if head not in TEACHER_CACHE_HEADS:
        raise KeyError(f"unknown teacher head {head!r}; known: {list(TEACHER_CACHE_HEADS)}")
    name = CLEAN_CACHE_NAME if clean else f"teacher_cache_augmented_seed{int(seed)}.pt"
    return name if head == "embedding" else name.replace(".pt", f"_{head}.pt")


def keyed_cache_file_name(clean: bool, seed: int, head: str, key: str) -> str:
    """:func:`cache_file_name` with the first 16 characters of the cache key before ``.pt``
    (``teacher_cache-3f2a9c0e11d4b7a2.pt``): the file of a cache built for other inputs than the folder's own."""
    return cache_file_name(clean, seed, head)[:-len(".pt")] + f"-{key[:16]}.pt"


#: Data settings of the augmented (reference) cache's single random view (``clean=False``), beside its seed.
AUGMENTATION_FIELDS: tuple[str, ...] = ("augment_clouds", "augment_images", "bcs_aug_rate", "hue_aug_rate",
                                        "image_lidar_k")


def teacher_cache_key_fields(*, teacher_weights_sha256: str | None, teacher_config_hash: str | None, head: str,
                             dataset_fingerprint: str, image_size: tuple[int, int] | None,
                             data_cfg: "DataConfig", clean: bool, seed: int) -> dict[str, Any]:
    """Everything a teacher cache's embeddings depend on (plain JSON values; hashed by :func:`teacher_cache_key`).

    Args:
        teacher_weights_sha256: SHA-256 of ``teacher.pt`` (:func:`~distilvpr_lib.data.files.file_sha256`).
        teacher_config_hash: :func:`model_config_hash` of the teacher's model config.
        head: the cached head (:data:`TEACHER_CACHE_HEADS`).
        dataset_fingerprint: :func:`~distilvpr_lib.data.fingerprint.dataset_fingerprint` of the dataset and
            image folders (their files' content: sub-maps, positions, image files and sizes).
        image_size: ``(height, width)`` of the training images (the teacher sees them unresized).
        data_cfg: the voxel size always; for ``clean=False`` the augmentation settings
            (:data:`AUGMENTATION_FIELDS`) too.
        clean: un-augmented inputs, or the reference's single augmented view.
        seed: the augmented view's seed (left out of a clean cache's key: it does not change it).

    Returns:
        ``{"format", "teacher_weights_sha256", "teacher_config_hash", "head", "dataset_fingerprint",
        "image_size", "quantization_size", "clean"}`` plus ``"seed"`` and the augmentation fields when not clean.
    """
    fields: dict[str, Any] = {
        "format": CACHE_FORMAT,
        "teacher_weights_sha256": teacher_weights_sha256,
        "teacher_config_hash": teacher_config_hash,
        "head": head,
        "dataset_fingerprint": dataset_fingerprint,
        "image_size": None if image_size is None else [int(image_size[0]), int(image_size[1])],
        "quantization_size": float(data_cfg.quantization_size),
        "clean": bool(clean),
    }
    if not clean:
        fields["seed"] = int(seed)
        fields.update({name: getattr(data_cfg, name) for name in AUGMENTATION_FIELDS})
    return fields


def teacher_cache_key(fields: Mapping[str, Any]) -> str:
    """Hex SHA-256 of :func:`teacher_cache_key_fields`' canonical JSON: two caches with the same key hold the
    same embeddings."""
    return hashlib.sha256(json.dumps(dict(fields), sort_keys=True, default=list).encode()).hexdigest()


def describe_key_change(recorded: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> str:
    """Which inputs of a cache differ from the ones wanted, for a message: ``"dataset_fingerprint, image_size"``
    (``"unrecorded inputs"`` for a cache written before caches were keyed)."""
    if not recorded:
        return "unrecorded inputs (a cache written before caches were keyed)"
    changed = [name for name in sorted(set(recorded) | set(fields)) if recorded.get(name) != fields.get(name)]
    return ", ".join(changed) or "its key"


def training_image_size(benchmark: "Benchmark") -> tuple[int, int] | None:
    """``(height, width)`` of the first training sub-map's nearest image (header only); ``None`` without images."""
    from distilvpr_lib.data.images import check_image_file

    if not benchmark.has_images or not benchmark.training_tuples:
        return None
    first = benchmark.training_tuples[min(benchmark.training_tuples)].rel_scan_filepath
    width, height = check_image_file(benchmark.image_path(first, 0))
    return int(height), int(width)


class HeadAsEmbedding(nn.Module):
    """Wraps a teacher so that ``forward(batch)["embedding"]`` is one of its heads (for caching that head)."""

    def __init__(self, teacher: nn.Module, head: str) -> None:
        super().__init__()
        self.teacher, self.head = teacher, head

    def forward(self, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """``batch`` as the teacher's -> ``{"embedding": teacher(batch)[head]}`` (B, D_head)."""
        return {"embedding": self.teacher(batch)[self.head]}


def model_config_hash(model_cfg: "ModelConfig | Mapping[str, Any]") -> str:
    """SHA-256 (hex, first 16 chars) of a model config's canonical JSON: identifies a teacher architecture."""
    import dataclasses

    data = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else dict(model_cfg)
    text = json.dumps(data, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class TeacherCacheError(CheckpointError, ValueError):
    """A teacher cache file is unreadable or not a cache; the message names the file."""


@dataclass
class TeacherCache:
    """Teacher embeddings of the training sub-maps, looked up by ``rel_path``.

    Attributes:
        rel_paths: N sub-map paths (relative to the dataset folder), in cache order.
        embeddings: (N, D) float32 matrix; row i belongs to ``rel_paths[i]``.
        metadata: provenance (see the module docstring).
    """

    rel_paths: list[str]
    embeddings: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != len(self.rel_paths):
            raise ValueError(
                f"teacher cache: {len(self.rel_paths)} paths but embeddings of shape {tuple(self.embeddings.shape)}")
        self._row = {rel: i for i, rel in enumerate(self.rel_paths)}
        if len(self._row) != len(self.rel_paths):
            raise ValueError("teacher cache: duplicate rel_paths")
        self._device_embeddings: dict[torch.device, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __contains__(self, rel_path: object) -> bool:
        return rel_path in self._row

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.embeddings.shape[1])

    def as_dict(self) -> dict[str, torch.Tensor]:
        """``{rel_path: (D,) tensor}`` (views of the shared matrix)."""
        return {rel: self.embeddings[i] for i, rel in enumerate(self.rel_paths)}

    def missing(self, rel_paths: Iterable[str]) -> list[str]:
        """The given paths that the cache lacks."""
        return [rel for rel in rel_paths if rel not in self._row]

    def lookup(self, rel_paths: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """Stack the embeddings of a batch.

        Args:
            rel_paths: B sub-map paths.
            device: where the result lives (the whole matrix is copied there once and reused).

        Returns:
            (B, D) float32 tensor (no gradient).

        Raises:
            KeyError: a path is not in the cache (names the first missing ones).
        """
        missing = self.missing(rel_paths)
        if missing:
            source = self.metadata.get("path", "teacher cache")
            raise KeyError(f"{source}: {len(missing)} sub-map(s) not in the teacher cache, e.g. {missing[:3]}; "
                           "rebuild the cache for this dataset")
        device = torch.device(device) if device is not None else self.embeddings.device
        matrix = self._device_embeddings.get(device)
        if matrix is None:
            matrix = self.embeddings.to(device)
            self._device_embeddings[device] = matrix
        index = torch.as_tensor([self._row[rel] for rel in rel_paths], dtype=torch.long, device=device)
        return matrix.index_select(0, index)

    def norm_stats(self) -> dict[str, float]:
        """``{"mean": mean ‖t‖, "max": max ‖t‖}`` over the cache (raw, un-normalised norms)."""
        norms = self.embeddings.float().norm(dim=1)
        return {"mean": float(norms.mean()) if len(norms) else float("nan"),
                "max": float(norms.max()) if len(norms) else float("nan")}

    # ------------------------------------------------------------------ files
    def save(self, path: PathLike) -> Path:
        """Write atomically in the format of the module docstring."""
        path = Path(path)
        embeddings = self.embeddings.detach().to("cpu", torch.float32).contiguous()
        meta = {k: v for k, v in self.metadata.items() if k != "path"}
        payload = {
            "format": CACHE_FORMAT,
            "embeddings": {rel: embeddings[i] for i, rel in enumerate(self.rel_paths)},
            "metadata": meta,
        }
        with atomic_write(path, "wb") as handle:
            torch.save(payload, handle)
        return path

    @classmethod
    def load(cls, path: PathLike) -> "TeacherCache":
        """Read a cache written by :meth:`save` (``weights_only=True``).

        Raises:
            MissingCheckpointError: no such file (a FileNotFoundError). TeacherCacheError: not a teacher
                cache (a CheckpointError and ValueError; names the file).
        """
        path = Path(path)
        if not path.is_file():
            raise MissingCheckpointError("teacher cache not found", path=path)
        hint = "delete it: the next distill run rebuilds it from teacher.pt"
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - the file's problem, never torch's weights_only advice
            raise TeacherCacheError(f"unreadable teacher cache: {describe_torch_load_error(exc)}", path=path,
                                    hint=hint) from exc
        if not isinstance(payload, dict) or payload.get("format") != CACHE_FORMAT:
            raise TeacherCacheError(f"not a teacher cache (expected format {CACHE_FORMAT!r})", path=path, hint=hint)
        table = payload.get("embeddings")
        if not isinstance(table, dict) or not all(torch.is_tensor(v) for v in table.values()):
            raise TeacherCacheError("'embeddings' is not a mapping of sub-map paths to tensors", path=path, hint=hint)
        rel_paths = list(table)
        if rel_paths:
            matrix = torch.stack([table[rel].float() for rel in rel_paths])
        else:
            matrix = torch.zeros(0, int(payload.get("metadata", {}).get("dim", 0)))
        metadata = dict(payload.get("metadata", {}))
        metadata["path"] = str(path)
        return cls(rel_paths, matrix, metadata)


def build_teacher_cache(
    teacher: nn.Module,
    benchmark: "Benchmark",
    data_cfg: "DataConfig",
    batch_size: int,
    device: torch.device | str,
    clean: bool = True,
    seed: int = 7,
    metadata: Mapping[str, Any] | None = None,
    progress: bool = True,
    distributed: "DistributedContext | None" = None,
) -> TeacherCache:
    """Embed every training sub-map with the teacher, once.

    Distributed (``distributed`` with more than one rank, every rank calls this): the clean cache is
    a sharded forward pass — rank r embeds the r-th contiguous block of the sorted ids — gathered on
    every rank in id order (the same rows as a single-process build, up to floating-point batching
    effects). The augmented (reference) cache is one sequential random stream, so rank 0 builds it
    alone (identical to a single-process build) and sends it to the others.

    Args:
        teacher: a model whose ``forward(batch)`` returns a dict with ``embedding`` (B, D).
        benchmark: the loaded benchmark; its ``training_tuples`` are embedded in id order.
        data_cfg: data settings (quantisation size, image size, augmentation settings).
        batch_size: sub-maps per forward pass.
        device: where the teacher runs.
        clean: un-augmented inputs (default) or the reference's single augmented view.
        seed: seed of the augmented view (``clean=False``); global generators are restored after.
        metadata: extra provenance stored in the cache (e.g. the teacher's hashes).
        progress: show a tqdm bar.
        distributed: the run's ``DistributedContext`` (``None`` = single process).

    Returns:
        A :class:`TeacherCache` with one entry per training tuple (on every rank).
    """
    from torch.utils.data import DataLoader
    from distilvpr_lib.progress import progress_bar

    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset

    tuples = benchmark.training_tuples
    if not tuples:
        raise ValueError(f"{benchmark.dataset_dir}: no training tuples, so no teacher cache can be built")
    ctx = distributed
    if ctx is not None and ctx.is_distributed and not clean:
        cache = None
        if ctx.is_main:
            cache = build_teacher_cache(teacher, benchmark, data_cfg, batch_size, device, clean=clean, seed=seed,
                                        metadata=metadata, progress=progress)
        payload = ctx.broadcast_object(None if cache is None else (cache.rel_paths, cache.embeddings, cache.metadata))
        return TeacherCache(*payload)
    device = torch.device(device)
    dataset = TrainingDataset(benchmark, data_cfg, augment=not clean)
    ids = sorted(tuples)
    if ctx is not None and ctx.is_distributed:
        ids = ids[ctx.rank * len(ids) // ctx.world_size:(ctx.rank + 1) * len(ids) // ctx.world_size]
        progress = progress and ctx.is_main
    batches = [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]
    loader = DataLoader(dataset, batch_sampler=batches, collate_fn=make_collate_fn(None, data_cfg.quantization_size),
                        num_workers=data_cfg.num_workers, pin_memory=device.type == "cuda")
    rel_paths: list[str] = []
    chunks: list[torch.Tensor] = []
    was_training = teacher.training
    teacher.eval()
    started = time.time()
    with preserved_rng_state():
        if not clean:
            seed_everything(seed)
        with torch.no_grad():
            for batch in progress_bar(loader, desc="teacher cache", disable=not progress, leave=False):
                batch = move_to_device(batch, device)
                embedding = teacher(batch)["embedding"].float()
                chunks.append(embedding.cpu())
                rel_paths.extend(batch["rel_paths"])
    teacher.train(was_training)
    matrix = torch.cat(chunks) if chunks else torch.zeros(0, 0)
    if ctx is not None and ctx.is_distributed:  # shards in rank order = id order
        shards = [s for s in ctx.all_gather_objects((rel_paths, matrix)) if s[0]]
        rel_paths = [rel for shard_paths, _ in shards for rel in shard_paths]
        matrix = torch.cat([shard for _, shard in shards]) if shards else torch.zeros(0, 0)
    meta: dict[str, Any] = {
        "dataset_dir": str(Path(benchmark.dataset_dir).resolve()),
        "count": len(rel_paths),
        "dim": int(matrix.shape[1]) if matrix.ndim == 2 else 0,
        "clean": bool(clean),
        "seed": int(seed),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seconds": round(time.time() - started, 3),
    }
    meta.update(dict(metadata or {}))
    return TeacherCache(rel_paths, matrix, meta)


