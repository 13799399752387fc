"""Collate: quantised sparse coordinates, stacked images, positive/negative masks (docs/METHOD.md §2.6).

Masks, for labels ``L`` (tuple ids) of a batch::

    positives_mask[a, b] = L_b in positives(L_a)
    negatives_mask[a, b] = L_b not in non_negatives(L_a)

by binary search on the sorted id arrays; the diagonal is neither positive nor negative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch


def quantize(points: torch.Tensor | np.ndarray, size: float) -> torch.Tensor:
    """Unique voxel coordinates ``floor(p / size)`` of a cloud.

    Args:
        points: ``(P, 3)`` float coordinates.
        size: voxel size (> 0).

    Returns:
        LongTensor ``(M, 3)`` of unique voxels, sorted lexicographically; ``M <= P``.
    """
    if size <= 0:
        raise ValueError(f"quantization size must be > 0, got {size}")
    points = torch.as_tensor(points)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points of shape (P, 3), got {tuple(points.shape)}")
    voxels = torch.floor(points.to(torch.float64) / size).to(torch.int64)
    if len(voxels) == 0:
        return voxels
    # Unique rows via one int64 key per voxel (much faster than torch.unique(dim=0)); same order.
    low = voxels.min(dim=0).values
    shifted = voxels - low
    extent = shifted.max(dim=0).values + 1
    if float(extent[0]) * float(extent[1]) * float(extent[2]) >= 2**62:
        return torch.unique(voxels, dim=0)
    keys = (shifted[:, 0] * extent[1] + shifted[:, 1]) * extent[2] + shifted[:, 2]
    keys = torch.unique(keys)
    z = keys % extent[2]
    y = (keys // extent[2]) % extent[1]
    x = keys // (extent[2] * extent[1])
    return torch.stack([x, y, z], dim=1) + low


def _member(sorted_ids: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """``candidates[i] in sorted_ids`` by binary search; ``(len(candidates),)`` bool."""
    if sorted_ids.size == 0:
        return np.zeros(len(candidates), dtype=bool)
    where = np.searchsorted(sorted_ids, candidates)
    where = np.minimum(where, sorted_ids.size - 1)
    return sorted_ids[where] == candidates


def make_masks(labels: Sequence[int] | np.ndarray, tuples: Mapping[int, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of a batch.

    Args:
        labels: ``(B,)`` tuple ids.
        tuples: ``{id: TrainingTuple}`` with sorted ``positives`` / ``non_negatives``.

    Returns:
        ``(positives_mask, negatives_mask)`` BoolTensors ``(B, B)``, both ``False`` on the diagonal.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    positives = np.zeros((n, n), dtype=bool)
    negatives = np.zeros((n, n), dtype=bool)
    for a, label in enumerate(labels.tolist()):
        item = tuples[label]
        positives[a] = _member(np.asarray(item.positives, dtype=np.int64), labels)
        negatives[a] = ~_member(np.asarray(item.non_negatives, dtype=np.int64), labels)
    np.fill_diagonal(positives, False)
    np.fill_diagonal(negatives, False)
    return torch.from_numpy(positives), torch.from_numpy(negatives)


def batch_coordinates(voxel_lists: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-sample voxels with a leading batch index: IntTensor ``(N, 4)`` ``[b, x, y, z]``."""
    parts = []
    for b, voxels in enumerate(voxel_lists):
        index = torch.full((len(voxels), 1), b, dtype=torch.int64)
        parts.append(torch.cat([index, voxels.to(torch.int64)], dim=1))
    if not parts:
        return torch.zeros((0, 4), dtype=torch.int32)
    coords = torch.cat(parts, dim=0)
    if coords.numel() and (coords.abs().max() > torch.iinfo(torch.int32).max):
        raise ValueError("voxel coordinates overflow int32; use a larger quantization size")
    return coords.to(torch.int32)


def make_collate_fn(tuples: Mapping[int, Any] | None, quantization_size: float) -> Callable[[list[dict]], dict]:
    """A collate function for :class:`TrainingDataset` / :class:`EvaluationDataset` items.

    Args:
        tuples: training tuples for the masks, or ``None`` (evaluation: masks are ``None``).
        quantization_size: voxel size (``DataConfig.quantization_size``).

    Returns:
        ``collate(items) -> dict`` with
        ``coords`` IntTensor ``(N, 4)`` = ``[batch_index, x, y, z]``;
        ``images`` FloatTensor ``(B, 3, H, W)`` or ``None`` when items carry no image;
        ``clouds`` FloatTensor ``(B, 4096, 3)`` (the (augmented) points before quantisation);
        ``labels`` LongTensor ``(B,)`` (the items' ``ndx``);
        ``positives_mask``, ``negatives_mask`` BoolTensor ``(B, B)`` or ``None``;
        ``skip`` bool: ``True`` when the batch has no positive pair or no negative pair (the
        reference skips such batches; always ``False`` without tuples);
        ``rel_paths`` list[str].
    """

    def collate(items: list[dict]) -> dict[str, Any]:
        labels = torch.tensor([int(item["ndx"]) for item in items], dtype=torch.int64)
        coords = batch_coordinates([quantize(item["cloud"], quantization_size) for item in items])
        has_images = [("image" in item) for item in items]
        if any(has_images) and not all(has_images):
            raise ValueError("some items carry an image and others do not")
        images = torch.stack([item["image"] for item in items]) if items and all(has_images) else None
        clouds = torch.stack([item["cloud"] for item in items]) if items else torch.zeros((0, 0, 3))
        batch: dict[str, Any] = {
            "coords": coords,
            "images": images,
            "clouds": clouds,
            "labels": labels,
            "positives_mask": None,
            "negatives_mask": None,
            "skip": False,
            "rel_paths": [item["rel_path"] for item in items],
        }
        if tuples is not None:
            positives_mask, negatives_mask = make_masks(labels.numpy(), tuples)
            batch["positives_mask"] = positives_mask
            batch["negatives_mask"] = negatives_mask
            batch["skip"] = not (bool(positives_mask.any()) and bool(negatives_mask.any()))
        return batch

    return collate


def move_to_device(batch: Any, device: torch.device) -> Any:
    """A batch with every tensor moved to ``device``, also inside dicts / lists / tuples; other values kept.

    The one batch mover of the training loop, the teacher cache and the embedding
    (:func:`~distilvpr_lib.engine.evaluation.embed.compute_embeddings`). A mapping comes back as a new ``dict``
    (``coords`` ``(N, 4)``, ``images`` ``(B, 3, H, W)``, ... on ``device``; ``rel_paths`` and the flags unchanged),
    a list or tuple as one of its own type. Copies to CUDA are ``non_blocking``; a tensor already on ``device``
    is returned as is.
    """
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=device.type == "cuda")
    if isinstance(batch, Mapping):
        return {k: move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device) for v in batch)
    return batch
