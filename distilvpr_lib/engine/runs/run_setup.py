"""What the teacher and the student pipelines share: opening the run, the benchmark and its checks,
the training loader, and the run-level parts of ``metrics.json``.

Under ``torchrun`` (``WORLD_SIZE > 1``) :func:`start_run` initialises the process group from the
environment (:mod:`distilvpr_lib.engine.train.distributed`) and :func:`make_training_loader` gives this
rank's slices of every global batch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.data.files import write_json
from distilvpr_lib.engine.train.console import say
from distilvpr_lib.engine.train.distributed import DistributedContext, init_distributed
from distilvpr_lib.engine.train.loop import SELECTION_RULE, TrainingHistory
from distilvpr_lib.engine.runs.run_folder import CONFIG_FILE, METRICS_FILE, check_resumable, tidy_completed_run
from distilvpr_lib.engine.train.seeding import configure_determinism, seed_everything
from distilvpr_lib.errors import MissingDataError

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.data.benchmark import Benchmark

PathLike = str | os.PathLike


def check_benchmark(benchmark: "Benchmark", cfg: ExperimentConfig, need_images: bool) -> None:
    """Refuse a benchmark a run cannot use: no training tuples, no images (when needed), no test split, or no
    validation split while ``cfg.train.use_validation_split``.

    Raises:
        MissingDataError: (a ValueError) naming the dataset folder and what is missing. The preflight
            (:mod:`.preflight`) checks the same before anything is written.
    """
    where = benchmark.dataset_dir
    if not benchmark.training_tuples:
        raise MissingDataError("no training tuples (training_queries_baseline.pickle); cannot train", path=where)
    if need_images and not benchmark.has_images:
        raise MissingDataError("the benchmark has no images (no LiDAR-to-image index); both models need images",
                               path=where)
    if not benchmark.has_split("test"):
        raise MissingDataError("no test split (evaluation pickles) to report on", path=where)
    if cfg.train.use_validation_split and not benchmark.has_split("validation"):
        raise MissingDataError(
            "no validation split for model selection (validation_evaluation_*.pickle)", path=where,
            hint=f"build it with distilvpr prepare-data {where}, or set "
                 "train.use_validation_split=false (then the last epoch is kept)")


def make_cached_student_loader(benchmark: "Benchmark", cfg: ExperimentConfig, progress: bool = True,
                               out_dir: PathLike | None = None) -> Any:
    """The student's training batches from the decoded image cache, augmented in batches (``data.image_cache``;
    single process). Same sampler, seed and batch keys as :func:`make_training_loader` (no clouds).

    The cache lives where :func:`~distilvpr_lib.engine.runs.cache_dirs.resolve_image_cache_dir` says (the
    dataset's ``.cache`` when writable, else the run folder ``out_dir``), so read-only datasets work."""
    from distilvpr_lib.data.image_cache import BatchImageAugment, CachedStudentLoader, open_training_image_cache
    from distilvpr_lib.data.sampler import PositivePairBatchSampler
    from distilvpr_lib.engine.runs.cache_dirs import resolve_image_cache_dir

    cache_dir = resolve_image_cache_dir(cfg, out_dir) if out_dir is not None else cfg.data.image_cache_dir
    cache = open_training_image_cache(benchmark, cache_dir, k_max=cfg.data.image_lidar_k, progress=progress)
    augment = BatchImageAugment(cfg.data.bcs_aug_rate, cfg.data.hue_aug_rate, train=cfg.data.augment_images)
    sampler = PositivePairBatchSampler(benchmark.training_tuples, cfg.train.batch_size, seed=cfg.train.seed)
    return CachedStudentLoader(cache, benchmark, sampler, augment, image_lidar_k=cfg.data.image_lidar_k)


def make_training_loader(benchmark: "Benchmark", cfg: ExperimentConfig, ctx: DistributedContext,
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
    if data_cfg.num_workers > 0 and data_cfg.persistent_workers:
        extra["persistent_workers"] = True
    return DataLoader(dataset, batch_sampler=sampler,
                      collate_fn=make_collate_fn(benchmark.training_tuples, data_cfg.quantization_size),
                      num_workers=data_cfg.num_workers, pin_memory=ctx.device.type == "cuda", **extra)


def describe_world(ctx: DistributedContext) -> str:
    """``" x N processes (backend)"`` for a distributed run, ``""`` otherwise (appended to the start line)."""
    return f" x {ctx.world_size} processes ({ctx.backend})" if ctx.is_distributed else ""


def run_dataset_fingerprint(cfg: ExperimentConfig) -> str:
    """The fingerprint of the run's dataset and image folders (:func:`~distilvpr_lib.data.fingerprint.dataset_fingerprint`):
    recorded in the checkpoint and ``metrics.json``, compared on resume, part of the teacher cache's key."""
    from distilvpr_lib.data.fingerprint import dataset_fingerprint

    return dataset_fingerprint(cfg.data.dataset_dir, cfg.data.image_dir)


def run_record(cfg: ExperimentConfig, dataset_fingerprint: str) -> dict[str, Any]:
    """What a run stores about its inputs in every checkpoint (``run``) and in ``metrics.json``."""
    return {"dataset_fingerprint": dataset_fingerprint, "dataset_dir": str(cfg.data.dataset_dir),
            "image_dir": None if cfg.data.image_dir is None else str(cfg.data.image_dir)}


def start_run(cfg: ExperimentConfig, out_dir: PathLike, resume: bool,
              dataset_fingerprint: str | None = None) -> tuple[Path, DistributedContext]:
    """Open a run: refuse a folder of another configuration or dataset (:func:`check_resumable`), initialise the
    process group (torchrun), create the folder and write ``config.json`` (rank 0), seed and set determinism.

    Args:
        dataset_fingerprint: :func:`run_dataset_fingerprint` when the caller has it (else computed when needed).

    Returns:
        ``(out_dir as a Path, the DistributedContext)``.
    """
    out_dir = Path(out_dir)
    check_resumable(cfg, out_dir, resume, dataset_fingerprint=dataset_fingerprint)
    ctx = init_distributed(cfg.train.device, cfg.train.distributed_backend, cfg.train.distributed_timeout_s)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.train.seed)
    configure_determinism(cfg.train.deterministic)
    if ctx.is_main:
        write_json(out_dir / CONFIG_FILE, cfg.to_dict())
    return out_dir, ctx


def history_metrics(history: TrainingHistory) -> dict[str, Any]:
    """The training part of ``metrics.json``: ``epochs``, ``best_epoch``, ``selection``, ``validation`` (the best
    epoch's), ``final_losses``, ``train_seconds``, ``seconds_per_epoch`` (schema in :mod:`.run_folder`)."""
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


@dataclass
class RunMetrics:
    """A finished run's ``metrics.json``, the same record for both pipelines (schema in :mod:`.run_folder`);
    :func:`finish_run` writes it. ``extra`` holds what only one kind has (the student's teacher folder and cache
    key, the teacher's cache size), written after the shared fields."""

    #: ``"teacher"`` or ``"student"``.
    kind: str
    #: The distillation method's name (``"teacher"`` for a teacher).
    method: str
    profile: str | None
    seed: int
    device: str
    #: Threads of the run: float sums split over threads round differently (docs/study/LOG.md, "The cpu profile").
    cpu_threads: int
    #: Device, CPU capability and autocast of the training (docs/benchmark/PROTOCOL.md §5, "Machine").
    precision: dict[str, Any]
    dataset_dir: str
    dataset_fingerprint: str
    #: :func:`history_metrics` of the training (epochs, selection, validation, final losses, times).
    history: dict[str, Any]
    #: The test split's summary at the selected epoch
    #: (:func:`~distilvpr_lib.engine.evaluation.results.retrieval_summary`).
    test: dict[str, Any]
    loss_weights: dict[str, float]
    embedding_norms: dict[str, Any]
    wall_time_s: float
    #: The run folder's files by role (config, weights, test_results, tensorboard, ...).
    files: dict[str, str]
    status: str = "complete"
    #: Ranks of a distributed (torchrun) run; ``None`` for one process.
    world_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``metrics.json`` (the history's keys at the top level, as readers expect)."""
        out: dict[str, Any] = {
            "kind": self.kind, "method": self.method, "profile": self.profile, "seed": self.seed,
            "device": self.device, "cpu_threads": self.cpu_threads, "precision": self.precision,
            "dataset_dir": self.dataset_dir, "dataset_fingerprint": self.dataset_fingerprint, "status": self.status,
            **self.history, "test": self.test, "loss_weights": self.loss_weights,
            "embedding_norms": self.embedding_norms, **self.extra, "wall_time_s": self.wall_time_s,
            "files": self.files}
        if self.world_size is not None:
            out["world_size"] = self.world_size
        return out


#: One screen about a finished run, beside ``metrics.json``: what differs from the profile, the selected epoch,
#: its validation and test recalls, skipped batches, wall time.
SUMMARY_FILE = "summary.json"


def summary_text(kind: str, metrics: Mapping[str, Any], out_dir: Path) -> str:
    """The closing lines of a run: selected epoch and rule, validation and test recalls, per-run test AR@1,
    final losses, skipped batches, wall time and the folder."""
    lines = [f"{kind}: selected epoch {metrics.get('best_epoch')} ({metrics.get('selection')})"]
    for split in ("validation", "test"):
        summary = metrics.get(split) or {}
        recalls = "  ".join(f"{k}={v:.2f}" for k, v in summary.items() if k.startswith("AR@") and v is not None)
        if recalls:
            lines.append(f"  {split:<10} {recalls}")
    per_run = (metrics.get("test") or {}).get("per_run_AR@1") or {}
    if per_run:
        lines.append("  test AR@1 per database run: "
                     + ", ".join(f"{k}={v:.1f}" for k, v in per_run.items() if v is not None))
    losses = metrics.get("final_losses") or {}
    if losses:
        lines.append("  final losses: " + "  ".join(f"{k}={v:.4g}" for k, v in losses.items()))
    skipped = sum(int(e.get("skipped_batches", 0)) for e in metrics.get("epochs") or [])
    if skipped:
        total = skipped + sum(int(e.get("batches", 0)) for e in metrics.get("epochs") or [])
        lines.append(f"  skipped {skipped} of {total} batches (no positive or no negative pair in the batch)")
    lines.append(f"  {metrics.get('wall_time_s', 0.0):.1f} s; wrote {out_dir}")
    return "\n".join(lines)


def finish_run(kind: str, record: RunMetrics, cfg: ExperimentConfig, out_dir: Path,
               progress: bool) -> dict[str, Any]:
    """The one closing step of both pipelines (rank 0): write ``metrics.json`` from ``record`` (``complete``),
    then ``summary.json``, print the summary once (:func:`summary_text`; also kept in ``run.log``), and keep the
    selected weights once, without the checkpoints only a resume needs
    (:func:`~distilvpr_lib.engine.runs.run_folder.tidy_completed_run`). Returns the metrics written."""
    from distilvpr_lib.config import config_changes

    metrics = record.to_dict()
    write_json(out_dir / METRICS_FILE, metrics)

    epochs = metrics.get("epochs") or []
    summary = {
        "kind": metrics.get("kind"), "method": metrics.get("method"), "profile": cfg.profile, "seed": cfg.train.seed,
        "config_changes": {key: {"profile": old, "run": new} for key, (old, new) in config_changes(cfg).items()},
        "epochs": len(epochs), "best_epoch": metrics.get("best_epoch"), "selection": metrics.get("selection"),
        "validation": {k: v for k, v in (metrics.get("validation") or {}).items() if k.startswith("AR@")},
        "test": {k: v for k, v in (metrics.get("test") or {}).items() if k.startswith("AR@")},
        "skipped_batches": sum(int(e.get("skipped_batches", 0)) for e in epochs),
        "batches": sum(int(e.get("batches", 0)) for e in epochs),
        "wall_time_s": metrics.get("wall_time_s"),
    }
    write_json(out_dir / SUMMARY_FILE, summary)
    say(summary_text(kind, metrics, out_dir), progress)
    tidy_completed_run(out_dir, (metrics.get("files") or {})["weights"], cfg.train.keep_checkpoints)
    return metrics


__all__ = ["RunMetrics", "SUMMARY_FILE", "check_benchmark", "describe_world", "finish_run", "history_metrics",
           "make_training_loader", "run_dataset_fingerprint", "run_record", "start_run", "summary_text"]
