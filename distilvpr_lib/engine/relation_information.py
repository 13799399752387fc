"""How much place information the relations that distillation hands down carry (the study's diagnostics).

The DistilVPR terms transfer *relations* between samples (distances, angles/cosines, geodesic distances),
not the descriptors themselves. If the teacher's self relations separate same-place pairs from
different-place pairs no better than the student's own, there is little for distillation to add. This
module measures it: for the teacher's fused descriptor, its cloud-only and image-only heads and any
student, the ROC AUC of positive (≤ ``POSITIVE_RADIUS_M``) vs negative (> ``NON_NEGATIVE_RADIUS_M``)
pairs scored by each relation (:func:`distilvpr_lib.engine.report.relation_auc`), over every database
entry of a split (all runs pooled: pairs within a run and across runs).

That AUC is dominated by far-apart pairs, while top-1 retrieval is decided among *nearby* places: a match
counts within ``TRUE_NEIGHBOUR_RADIUS_M`` (25 m), so the confusers are places just beyond it. The column
``cosine_near`` scores the same positives against near negatives only (``NEAR_NEGATIVE_BAND_M``: 25 to
100 m away), by the cosine relation that evaluation ranks by.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from distilvpr_lib.config import NON_NEGATIVE_RADIUS_M, POSITIVE_RADIUS_M, TRUE_NEIGHBOUR_RADIUS_M

#: Near negatives for ``cosine_near``: pairs more than 25 m (a retrieval miss) and at most 100 m apart.
NEAR_NEGATIVE_BAND_M: tuple[float, float] = (TRUE_NEIGHBOUR_RADIUS_M, 100.0)


def split_pair_masks(benchmark: Any, split: str = "validation",
                     negative_band: tuple[float, float] = (NON_NEGATIVE_RADIUS_M, float("inf"))
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(N, N) positive and negative masks over the split's database entries (all runs, in set order).

    Positive: UTM distance ≤ ``POSITIVE_RADIUS_M`` (10 m); negative: distance in ``negative_band`` = (lo, hi]
    (default > ``NON_NEGATIVE_RADIUS_M``, 50 m, as in training); other pairs are neither. The diagonal is
    neither.
    """
    xy = np.array([[s[k]["northing"], s[k]["easting"]] for s in benchmark.database_sets(split) for k in sorted(s)],
                  dtype=np.float64)
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    positives = d <= POSITIVE_RADIUS_M
    np.fill_diagonal(positives, False)
    low, high = negative_band
    return positives, (d > low) & (d <= high)


def relation_auc_table(teacher_dir: str | Path | None, student_dirs: Mapping[str, str | Path],
                       dataset_dir: str | Path | None = None, split: str = "validation", curvature: float = 0.1,
                       device: str = "cpu") -> pd.DataFrame:
    """ROC AUC of positive vs negative pairs per descriptor and relation, on ``split``.

    Args:
        teacher_dir: a teacher folder (its fused, cloud-only and image-only heads are scored), or ``None``.
        student_dirs: label -> student run folder.
        dataset_dir: benchmark folder (default: the teacher's, else the first student's ``data.dataset_dir``).
        split: ``"validation"`` (the default: every choice is made there) or ``"test"``.
        curvature: ``c`` of the hyperbolic relation (the distillation's).

    Returns:
        DataFrame indexed by descriptor (``teacher fused``, ``teacher cloud-only``, ``teacher image-only``,
        then the student labels), columns ``euclidean``, ``cosine``, ``hyperbolic`` (AUC, positives vs
        negatives beyond 50 m), ``cosine_near`` (AUC, positives vs near negatives, ``NEAR_NEGATIVE_BAND_M``) and
        ``n_pairs+``.
    """
    from distilvpr_lib.engine import embed
    from distilvpr_lib.engine.report import relation_auc
    from distilvpr_lib.engine.run_evaluation import TEACHER_HEADS, head_split_embeddings, load_benchmark
    from distilvpr_lib.engine.run_folder import load_model_from_dir
    from distilvpr_lib.config import apply_overrides

    descriptors: dict[str, np.ndarray] = {}
    benchmark = None
    first_cfg = None

    def bench_for(cfg: Any) -> Any:
        nonlocal benchmark, first_cfg
        if benchmark is None:
            first_cfg = cfg if dataset_dir is None else apply_overrides(cfg, {"data.dataset_dir": str(dataset_dir),
                                                                              "data.image_dir": None})
            benchmark = load_benchmark(first_cfg)
        return benchmark

    with torch.no_grad():
        if teacher_dir is not None:
            model, cfg, _ = load_model_from_dir(teacher_dir, device)
            heads = head_split_embeddings(model, bench_for(cfg), split, first_cfg, device)
            for key, label in TEACHER_HEADS.items():
                descriptors[f"teacher {label}"] = np.concatenate(heads[key][0])
        for label, folder in student_dirs.items():
            model, cfg, _ = load_model_from_dir(folder, device)
            bench = bench_for(cfg)
            database, _ = embed.compute_split_embeddings(model, bench, split=split, data_cfg=first_cfg.data,
                                                         batch_size=first_cfg.train.eval_batch_size, device=device)
            descriptors[str(label)] = np.concatenate(database)
    if benchmark is None:
        return pd.DataFrame()
    positives, negatives = split_pair_masks(benchmark, split)
    _, near = split_pair_masks(benchmark, split, negative_band=NEAR_NEGATIVE_BAND_M)
    rows = {}
    for label, x in descriptors.items():
        row: dict[str, Any] = relation_auc(x, positives, negatives, curvature=curvature)
        row["cosine_near"] = relation_auc(x, positives, near, relations=("cosine",))["cosine"]
        row["n_pairs+"] = int(np.triu(positives, 1).sum())
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")
