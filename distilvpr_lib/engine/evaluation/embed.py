"""Embedding extraction and whole-split evaluation of a model (docs/METHOD.md §2.7, §6).

:func:`compute_embeddings` runs a model over a dataset / loader in eval mode without gradients.
:func:`compute_split_embeddings` embeds every database and query set of a split in **one pass**
over the distinct clouds (all sets merged, as the reference's single DataLoader; a cloud that is
both a database and a query entry is embedded once, which gives the same numbers because
evaluation is deterministic), then splits the rows back per run. For Boreas the query embeddings
are the database ones (the query pickle only supplies the true-neighbour lists).
:func:`evaluate_model` = :func:`compute_split_embeddings` + :func:`~.evaluate.evaluate_retrieval`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from distilvpr_lib.data.collate import move_to_device
from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval
from distilvpr_lib.engine.evaluation.results import RetrievalResults

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DataConfig

#: ``(benchmark, rel_paths) -> Dataset`` building the evaluation dataset of a list of clouds.
DatasetFactory = Callable[[Any, Sequence[str]], Dataset]


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def compute_embeddings(
    model: nn.Module,
    data: Dataset | DataLoader,
    device: str | torch.device | None = None,
    key: str = "embedding",
    batch_size: int | None = None,
    quantization_size: float | None = None,
    num_workers: int = 0,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    progress: bool = False,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Embed every item of ``data`` with ``model`` (eval mode, inference mode), in order.

    Args:
        model: module whose ``forward(batch_dict)`` returns a dict holding ``key`` -> (B, D)
            (or returns the (B, D) tensor itself). Its training mode is restored afterwards.
        data: a ``DataLoader`` yielding batch dicts (used as is; must not shuffle), or a
            ``Dataset`` of item dicts, batched here with ``shuffle=False`` and ``collate_fn``
            (default :func:`distilvpr_lib.data.collate.make_collate_fn` ``(None, quantization_size)``).
        device: where batches go; ``None`` = the device of the model's parameters.
            The model itself is not moved.
        key: output entry to collect (``"embedding"``, ``"cloud_embedding"``, ...).
        batch_size, quantization_size, num_workers, collate_fn: only used when ``data`` is a Dataset.
        progress: show a tqdm bar.
        channels_last: give the model its images (``batch["images"]``, (B, 3, H, W)) in the channels-last
            memory format (as a model trained so runs them;
            :func:`~distilvpr_lib.engine.train.devices.channels_last_enabled`).
        autocast_dtype: run the forward under ``torch.autocast`` with this dtype (``None``: no autocast).
            The embeddings are returned as float32 either way.
    Returns:
        (n, D) float32 array, row r = item r.
    """
    device = _model_device(model) if device is None else torch.device(device)
    if isinstance(data, DataLoader):
        loader = data
    else:
        if batch_size is None or batch_size < 1:
            raise ValueError(f"compute_embeddings: a positive batch_size is needed to batch a Dataset, got {batch_size}")
        if collate_fn is None:
            if quantization_size is None:
                raise ValueError("compute_embeddings: give quantization_size (or collate_fn) to batch a Dataset")
            from distilvpr_lib.data.collate import make_collate_fn  # lazy: data and engine stay decoupled

            collate_fn = make_collate_fn(None, quantization_size)
        loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                            collate_fn=collate_fn, drop_last=False)

    batches = loader
    if progress:
        from distilvpr_lib.progress import progress_bar

        batches = progress_bar(loader, desc="embedding" if key == "embedding" else f"embedding ({key})", leave=False)
    was_training = model.training
    model.eval()
    chunks: list[np.ndarray] = []
    try:
        autocast = (contextlib.nullcontext() if autocast_dtype is None
                    else torch.autocast(device_type=device.type, dtype=autocast_dtype))
        with torch.inference_mode(), autocast:
            for batch in batches:
                batch = move_to_device(batch, device)
                if channels_last and isinstance(batch, Mapping) and torch.is_tensor(batch.get("images")) \
                        and batch["images"].ndim == 4:
                    batch = {**batch, "images": batch["images"].contiguous(memory_format=torch.channels_last)}
                out = model(batch)
                emb = out[key] if isinstance(out, Mapping) else out
                if not isinstance(emb, torch.Tensor) or emb.ndim != 2:
                    raise ValueError(f"compute_embeddings: model output {key!r} must be a (B, D) tensor, got "
                                     f"{type(emb).__name__} {tuple(getattr(emb, 'shape', ()))}")
                chunks.append(emb.detach().float().cpu().numpy())
    finally:
        model.train(was_training)
    if not chunks:
        return np.empty((0, 0), dtype=np.float32)
    embeddings = np.concatenate(chunks, axis=0)
    expected = len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else None
    if expected is not None and embeddings.shape[0] != expected:
        raise ValueError(f"compute_embeddings: {embeddings.shape[0]} embeddings for a dataset of {expected} items "
                         "(a sampler or drop_last skipped items?)")
    return embeddings


def _set_paths(run_set: Mapping[int, Mapping[Any, Any]], what: str) -> list[str]:
    """rel paths of one per-run set, in row order (keys 0..n-1)."""
    if set(run_set.keys()) != set(range(len(run_set))):
        raise ValueError(f"{what}: keys must be 0..{len(run_set) - 1}")
    return [run_set[k]["query"] for k in range(len(run_set))]


def _run_name(run_set: Mapping[int, Mapping[Any, Any]], index: int) -> str:
    """Grand-parent folder of the set's first cloud (``<run>/<submap folder>/<ts>.bin``), or the index."""
    if run_set:
        parts = PurePosixPath(str(run_set[min(run_set)]["query"]).replace("\\", "/")).parts
        if len(parts) >= 3:
            return parts[-3]
    return str(index)


def split_run_names(benchmark: Any, split: str) -> list[str]:
    """One name per database run of ``split`` (from ``benchmark.set_run_names`` when available)."""
    database_sets = benchmark.database_sets(split)
    names = list(benchmark.set_run_names(split)) if hasattr(benchmark, "set_run_names") else []
    if len(names) != len(database_sets):
        names = [""] * len(database_sets)
    return [name or _run_name(s, i) for i, (name, s) in enumerate(zip(names, database_sets))]


def evaluation_run_names(benchmark: Any, split: str) -> list[str]:
    """The ``run_names`` of :func:`~.evaluate.evaluate_retrieval` for ``split``: one per database run
    (:func:`split_run_names`), then one per query run beyond them (Boreas-style splits)."""
    query_sets = benchmark.query_sets(split)
    names = split_run_names(benchmark, split)
    names += [_run_name(query_sets[j], j) for j in range(len(names), len(query_sets))]
    return names


def compute_split_embeddings(
    model: nn.Module,
    benchmark: Any,
    split: str = "test",
    data_cfg: "DataConfig | None" = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    key: str = "embedding",
    dataset_factory: DatasetFactory | None = None,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    progress: bool = False,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Embeddings of every database and query set of a split, from one pass over distinct clouds.

    Args:
        model, device, key, progress, channels_last, autocast_dtype: as :func:`compute_embeddings`.
        benchmark: object with ``database_sets(split)``, ``query_sets(split)``, ``layout``
            (``"oxford"`` | ``"boreas"``) — a :class:`distilvpr_lib.data.benchmark.Benchmark`.
        split: ``"test"`` or ``"validation"``.
        data_cfg: gives ``quantization_size`` and ``num_workers`` (default ``DataConfig()``).
        batch_size: evaluation batch size (default ``TrainConfig().eval_batch_size``).
        dataset_factory: ``(benchmark, rel_paths) -> Dataset`` (default
            :class:`distilvpr_lib.data.datasets.EvaluationDataset`).
        collate_fn: default ``make_collate_fn(None, data_cfg.quantization_size)``.
    Returns:
        ``(database_embeddings, query_embeddings)``: lists of (n_i, D) / (m_j, D) float32 arrays,
        row k = entry k of the set. For Boreas the query list holds the database arrays.
    Raises:
        ValueError: Boreas query sets that do not align with the database sets.
    """
    from distilvpr_lib.config import DataConfig, Layout, TrainConfig

    data_cfg = DataConfig() if data_cfg is None else data_cfg
    batch_size = TrainConfig().eval_batch_size if batch_size is None else batch_size
    database_sets = benchmark.database_sets(split)
    query_sets = benchmark.query_sets(split)
    boreas = getattr(benchmark, "layout", Layout.OXFORD) == Layout.BOREAS

    db_paths = [_set_paths(s, f"{split} database set {i}") for i, s in enumerate(database_sets)]
    if boreas:
        _check_boreas_alignment(database_sets, query_sets, split)
        q_paths: list[list[str]] = []
    else:
        q_paths = [_set_paths(s, f"{split} query set {j}") for j, s in enumerate(query_sets)]

    # One pass over the distinct clouds of all sets (first-seen order), then gather per run.
    position: dict[str, int] = {}
    for paths in (*db_paths, *q_paths):
        for rel in paths:
            position.setdefault(rel, len(position))
    unique_paths = list(position)
    if dataset_factory is None:
        from distilvpr_lib.data.datasets import EvaluationDataset

        dataset_factory = EvaluationDataset
    dataset = dataset_factory(benchmark, unique_paths)
    if len(dataset) != len(unique_paths):
        raise ValueError(f"compute_split_embeddings: dataset has {len(dataset)} items for {len(unique_paths)} clouds")
    if unique_paths:
        embeddings = compute_embeddings(
            model, dataset, device=device, key=key, batch_size=batch_size,
            quantization_size=data_cfg.quantization_size, num_workers=data_cfg.num_workers,
            collate_fn=collate_fn, progress=progress, channels_last=channels_last, autocast_dtype=autocast_dtype,
        )
    else:
        embeddings = np.empty((0, 0), dtype=np.float32)
    dim = embeddings.shape[1] if embeddings.ndim == 2 else 0

    def gather(paths: list[str]) -> np.ndarray:
        if not paths:
            return np.empty((0, dim), dtype=np.float32)
        return embeddings[np.fromiter((position[p] for p in paths), dtype=np.int64, count=len(paths))]

    database_embeddings = [gather(p) for p in db_paths]
    query_embeddings = list(database_embeddings) if boreas else [gather(p) for p in q_paths]
    return database_embeddings, query_embeddings


def _check_boreas_alignment(database_sets: Sequence[Mapping], query_sets: Sequence[Mapping], split: str) -> None:
    """Boreas queries reuse the database embeddings: the sets must align index for index."""
    if len(query_sets) != len(database_sets):
        raise ValueError(f"Boreas {split} split: {len(query_sets)} query sets but {len(database_sets)} database sets")
    for r, (db, q) in enumerate(zip(database_sets, query_sets)):
        if len(db) != len(q):
            raise ValueError(f"Boreas {split} split, run {r}: {len(q)} query entries but {len(db)} database entries")
        for k in range(len(q)):
            if k not in q or k not in db:
                raise ValueError(f"Boreas {split} split, run {r}: keys must be 0..{len(q) - 1}")
            qp, dp = q[k].get("query"), db[k].get("query")
            if qp is not None and dp is not None and qp != dp:
                raise ValueError(f"Boreas {split} split, run {r}, entry {k}: query {qp!r} != database {dp!r}")


def evaluate_model(
    model: nn.Module,
    benchmark: Any,
    split: str = "test",
    data_cfg: "DataConfig | None" = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    top_k: int = 25,
    normalize: bool = True,
    search: str = "torch",
    key: str = "embedding",
    keep_retrievals: bool = True,
    dataset_factory: DatasetFactory | None = None,
    collate_fn: Callable[[list[dict]], dict] | None = None,
    progress: bool = False,
    channels_last: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> RetrievalResults:
    """Embed a split (:func:`compute_split_embeddings`) and evaluate it (:func:`evaluate_retrieval`).

    ``normalize``: cosine on L2-normalised embeddings (True, DistilVPR) or Euclidean on raw ones
    (``TrainConfig.eval_normalize``). Run names come from the benchmark. Other arguments as in
    :func:`compute_split_embeddings` and :func:`~.evaluate.evaluate_retrieval`.
    """
    database_embeddings, query_embeddings = compute_split_embeddings(
        model, benchmark, split=split, data_cfg=data_cfg, batch_size=batch_size, device=device, key=key,
        dataset_factory=dataset_factory, collate_fn=collate_fn, progress=progress, channels_last=channels_last,
        autocast_dtype=autocast_dtype,
    )
    database_sets, query_sets = benchmark.database_sets(split), benchmark.query_sets(split)
    names = evaluation_run_names(benchmark, split)
    return evaluate_retrieval(
        database_embeddings, query_embeddings, query_sets, top_k=top_k, normalize=normalize,
        search=search, database_sets=database_sets, run_names=names,
        keep_retrievals=keep_retrievals,
    )
