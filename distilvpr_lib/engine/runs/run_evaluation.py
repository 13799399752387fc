"""Evaluating trained models: one split with a run's settings, a finished folder, and a teacher's heads.

* :func:`evaluate_split` — the PointNetVLAD protocol (:func:`distilvpr_lib.engine.evaluation.embed.evaluate_model`)
  on one split with the run's data and evaluation settings (used for validation and test by the pipelines);
* :func:`evaluate_run` — a teacher folder or student run on a split of a benchmark;
* :func:`evaluate_heads` — the teacher's fused, cloud-only and image-only heads (the modality gap), from
  one embedding pass (:func:`head_split_embeddings`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from distilvpr_lib.config import ExperimentConfig
from distilvpr_lib.engine.train.devices import resolve_device
from distilvpr_lib.engine.evaluation.results import retrieval_summary
from distilvpr_lib.engine.runs.run_folder import load_model_from_dir

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.evaluation.results import RetrievalResults

PathLike = str | os.PathLike


def load_benchmark(cfg: ExperimentConfig) -> "Benchmark":
    """Load ``cfg.data.dataset_dir`` (with ``cfg.data.image_dir`` and ``cfg.data.layout``)."""
    from distilvpr_lib.data.benchmark import Benchmark

    return Benchmark.load(cfg.data.dataset_dir, image_dir=cfg.data.image_dir, layout=cfg.data.layout)


def evaluation_kernels(cfg: ExperimentConfig, device: torch.device | str) -> tuple[bool, torch.dtype | None]:
    """``(channels_last, autocast_dtype)`` of the run's validation and test embedding.

    Channels-last as the run trains (:func:`~distilvpr_lib.engine.train.devices.channels_last_enabled`); autocast
    only with ``train.eval_mixed_precision`` (and ``mixed_precision``): the training dtype (``amp_dtype``) on CUDA,
    bfloat16 on the CPU. Off by default: validation and test embed in float32, as they always did.
    """
    from distilvpr_lib.engine.train.devices import channels_last_enabled, resolve_amp_dtype

    device = torch.device(device)
    autocast_dtype = None
    if cfg.train.mixed_precision and cfg.train.eval_mixed_precision:
        dtype = resolve_amp_dtype(cfg.train.amp_dtype, device)
        if device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16):
            autocast_dtype = dtype
    return channels_last_enabled(cfg.train, device), autocast_dtype


def evaluate_split(model: nn.Module, benchmark: "Benchmark", split: str, cfg: ExperimentConfig,
                   device: torch.device, progress: bool = False) -> "RetrievalResults":
    """The PointNetVLAD protocol on one split (``engine.evaluation.embed.evaluate_model``) with the run's settings
    (eval batch size, metric, and the kernels of :func:`evaluation_kernels`; a channels-last run's model is put
    in that memory format, a no-op for the trainer's own model)."""
    from distilvpr_lib.engine.evaluation import embed

    channels_last, autocast_dtype = evaluation_kernels(cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return embed.evaluate_model(model, benchmark, split=split, data_cfg=cfg.data,
                                batch_size=cfg.train.eval_batch_size, device=device,
                                normalize=cfg.train.eval_normalize, progress=progress,
                                channels_last=channels_last, autocast_dtype=autocast_dtype)


def evaluate_run(model_dir: PathLike, dataset_dir: PathLike | None = None, split: str = "test",
                 device: str = "auto", image_dir: PathLike | None = None, progress: bool = True,
                 results_path: PathLike | None = None, preflight: bool = True,
                 layout: str | None = None) -> tuple[dict[str, Any], "RetrievalResults"]:
    """Evaluate a teacher folder or student run on a split of a benchmark.

    Args:
        model_dir: folder with ``config.json`` and ``teacher.pt`` or ``student.pt``.
        dataset_dir: benchmark folder (default: the one in the folder's config).
        split: ``"test"`` or ``"validation"``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        image_dir: image root override.
        results_path: where to save the RetrievalResults (``.npz``/``.json``), optional.
        preflight: check the folder and the split first (:func:`~distilvpr_lib.engine.runs.preflight.preflight_evaluate`);
            ``False`` only when the caller has just run that check (the CLI does, before torch is imported).
        layout: the evaluated dataset's layout (``"auto"``: detected from its files); ``None`` = the folder's
            ``data.layout``.

    Returns:
        ``(summary dict, RetrievalResults)``; the summary has AR@1/5/10/1% and per-run AR@1.
    """
    from distilvpr_lib.engine.runs.preflight import preflight_evaluate

    if preflight:
        preflight_evaluate(model_dir, dataset_dir=dataset_dir, split=split, image_dir=image_dir, layout=layout)
    torch_device = resolve_device(device)
    model, cfg, kind = load_model_from_dir(model_dir, torch_device)
    overrides = {}
    if dataset_dir is not None:
        overrides["dataset_dir"] = str(dataset_dir)
    if image_dir is not None:
        overrides["image_dir"] = str(image_dir)
    if layout is not None:
        overrides["layout"] = layout
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
        (m_j, D_key) float32 arrays as :func:`distilvpr_lib.engine.evaluation.embed.compute_split_embeddings`.
    """
    from distilvpr_lib.engine.evaluation import embed

    wrapper = _ConcatenatedHeads(model, tuple(keys))
    channels_last, autocast_dtype = evaluation_kernels(cfg, device)  # as evaluate_split embeds the run's splits
    if channels_last:
        model.to(memory_format=torch.channels_last)
    database, query = embed.compute_split_embeddings(
        wrapper, benchmark, split=split, data_cfg=cfg.data, batch_size=cfg.train.eval_batch_size,
        device=torch.device(device), key="heads", channels_last=channels_last, autocast_dtype=autocast_dtype)
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

    from distilvpr_lib.engine.evaluation.embed import evaluation_run_names
    from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval

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
    names = evaluation_run_names(benchmark, split)
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


__all__ = ["HEAD_COLUMNS", "TEACHER_HEADS", "evaluate_heads", "evaluate_run", "evaluate_split", "evaluation_kernels",
           "head_split_embeddings", "load_benchmark"]
