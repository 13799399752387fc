"""How much place information the relations that distillation hands down carry (the study's diagnostics).

The DistilVPR terms transfer *relations* between samples (distances, angles/cosines, geodesic distances),
not the descriptors themselves. If the teacher's self relations separate same-place pairs from
different-place pairs no better than the student's own, there is little for distillation to add. This
module measures it: for the teacher's fused descriptor, its cloud-only and image-only heads and any
student, the ROC AUC of positive (≤ ``POSITIVE_RADIUS_M``) vs negative (> ``NON_NEGATIVE_RADIUS_M``)
pairs scored by each relation (:func:`distilvpr_lib.analysis.report.relation_auc`), over every database
entry of a split (all runs pooled: pairs within a run and across runs).

That AUC is dominated by far-apart pairs, while top-1 retrieval is decided among *nearby* places: a match
counts within ``TRUE_NEIGHBOUR_RADIUS_M`` (25 m), so the confusers are places just beyond it. The column
``cosine_near`` scores the same positives against near negatives only (``NEAR_NEGATIVE_BAND_M``: 25 to
100 m away), by the cosine relation that evaluation ranks by.

Seen vs unseen places: a split's database holds every sub-map outside the test region, so most of the
validation database lies in the *training* region (places the student was trained on, in other runs or the
same), while its queries lie in the held-out validation squares. ``AR@1_unseen`` and ``AR@1_seen`` rank
database entries against each other run by run (:func:`top1_recall_by_run_pairs`) with the split's query
entries as queries, and with the entries farther than 50 m from every query (training places) as queries:
a student that learnt the training places better but generalises worse shows it there.
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


def top1_recall_by_run_pairs(embeddings: np.ndarray, positions: np.ndarray, runs: np.ndarray,
                             query_mask: np.ndarray, radius_m: float = TRUE_NEIGHBOUR_RADIUS_M) -> float:
    """Top-1 recall (%) of some entries against every other run, averaged over ordered run pairs.

    For each ordered pair (query run ``a``, database run ``b ≠ a``), each entry of ``a`` selected by
    ``query_mask`` that has at least one entry of ``b`` within ``radius_m`` retrieves the entry of ``b`` with
    the highest cosine similarity; it is a hit if that entry is within ``radius_m``. The pair's recall is the
    share of hits; the result is the mean over pairs with at least one such query (the PointNetVLAD average,
    here over database entries instead of the query pickles).

    Args:
        embeddings: (N, D) descriptors.
        positions: (N, 2) UTM northing, easting in metres.
        runs: (N,) run index of each entry.
        query_mask: (N,) bool, which entries act as queries (every entry stays in the databases).
        radius_m: the true-neighbour radius (25 m).

    Returns:
        Recall@1 in percent, NaN if no query has a true neighbour in another run.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    xy, runs, query_mask = np.asarray(positions, np.float64), np.asarray(runs), np.asarray(query_mask, bool)
    recalls = []
    for a in np.unique(runs):
        queries = np.nonzero((runs == a) & query_mask)[0]
        if queries.size == 0:
            continue
        for b in np.unique(runs):
            if b == a:
                continue
            database = np.nonzero(runs == b)[0]
            dist = np.sqrt(((xy[queries, None, :] - xy[None, database, :]) ** 2).sum(-1))
            counted = (dist <= radius_m).any(1)
            if not counted.any():
                continue
            top = (x[queries] @ x[database].T).argmax(1)
            hits = dist[np.arange(queries.size), top] <= radius_m
            recalls.append(float(hits[counted].mean()))
    return 100.0 * float(np.mean(recalls)) if recalls else float("nan")


def _seen_unseen_entries(benchmark: Any, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Positions (N, 2), run indices (N,), and masks of the split's query entries and of the entries farther
    than ``NON_NEGATIVE_RADIUS_M`` from every query, over its database entries in set order."""
    database = [[s[k] for k in sorted(s)] for s in benchmark.database_sets(split)]
    entries = [e for run in database for e in run]
    positions = np.array([[e["northing"], e["easting"]] for e in entries], dtype=np.float64)
    runs = np.concatenate([np.full(len(run), i) for i, run in enumerate(database)])
    query_paths = {q["query"] for qs in benchmark.query_sets(split) for q in qs.values()}
    unseen = np.array([e["query"] in query_paths for e in entries])
    if unseen.any():
        d = np.sqrt(((positions[:, None, :] - positions[None, unseen, :]) ** 2).sum(-1))
        seen = (d > NON_NEGATIVE_RADIUS_M).all(1)
    else:
        seen = np.ones(len(entries), bool)
    return positions, runs, unseen, seen


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
        negatives beyond 50 m), ``cosine_near`` (AUC, positives vs near negatives, ``NEAR_NEGATIVE_BAND_M``),
        ``AR@1_unseen`` / ``AR@1_seen`` (top-1 recall with the split's queries / the training-region
        entries as queries, :func:`top1_recall_by_run_pairs`) and ``n_pairs+``.
    """
    from distilvpr_lib.engine.evaluation import embed
    from distilvpr_lib.analysis.report import relation_auc
    from distilvpr_lib.engine.runs.run_evaluation import TEACHER_HEADS, head_split_embeddings, load_benchmark
    from distilvpr_lib.engine.runs.run_folder import load_model_from_dir
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
    positions, runs, unseen, seen = _seen_unseen_entries(benchmark, split)
    rows = {}
    for label, x in descriptors.items():
        row: dict[str, Any] = relation_auc(x, positives, negatives, curvature=curvature)
        row["cosine_near"] = relation_auc(x, positives, near, relations=("cosine",))["cosine"]
        row["AR@1_unseen"] = top1_recall_by_run_pairs(x, positions, runs, unseen)
        row["AR@1_seen"] = top1_recall_by_run_pairs(x, positions, runs, seen)
        row["n_pairs+"] = int(np.triu(positives, 1).sum())
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def relation_run_dirs(runs: pd.DataFrame, batch_dir: str | Path, variations: list[str],
                      seeds: int = 1) -> dict[str, Path]:
    """Student folders to score with :func:`relation_auc_table`: the first ``seeds`` seeds of each variation.

    Args:
        runs: a batch table (:func:`distilvpr_lib.batch_ledger.collect_batch`; columns ``variation``, ``status``,
            ``param.seed``, ``run``).
        batch_dir: the batch folder the ``run`` names are relative to.
        variations: which variations (missing ones are skipped).
        seeds: how many of each variation's finished seeds with a folder, lowest first (0 = all); runs known
            only from a recorded CSV (:func:`distilvpr_lib.analysis.run_records.with_recorded_runs`) are skipped.

    Returns:
        label -> folder; the label is the variation name for ``seeds=1`` and ``"<variation> seed<k>"`` otherwise.
    """
    out: dict[str, Path] = {}
    for variation in variations:
        done = runs[(runs.variation == variation) & (runs.status == "ok")].sort_values("param.seed")
        done = done[[(Path(batch_dir) / str(r)).is_dir() for r in done["run"]]]  # recorded-only runs: no folder
        if seeds > 0:
            done = done.head(seeds)
        for _, row in done.iterrows():
            label = variation if seeds == 1 else f"{variation} seed{int(row['param.seed'])}"
            out[label] = Path(batch_dir) / str(row["run"])
    return out


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds of a :func:`relation_auc_table` whose rows are ``"<variation> seed<k>"``.

    Returns:
        One row per variation (teacher rows and other labels pass through, std NaN), columns
        ``<column>`` (mean) and ``<column> std`` for each numeric column, plus ``seeds``.
    """
    labels = table.index.to_series().str.replace(r" seed\d+$", "", regex=True)
    numeric = table.select_dtypes("number").drop(columns=["n_pairs+"], errors="ignore")
    grouped = numeric.groupby(labels.values, sort=False)
    mean, std = grouped.mean(), grouped.std(ddof=1)
    out = mean.copy()
    for column in numeric.columns:
        out[f"{column} std"] = std[column]
    out["seeds"] = grouped.size()
    return out
