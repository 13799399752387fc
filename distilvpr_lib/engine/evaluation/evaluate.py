"""The PointNetVLAD place-recognition evaluation protocol (docs/METHOD.md §6).

:func:`evaluate_retrieval` takes per-run database and query embeddings plus the query sets of the
evaluation pickles and returns a :class:`~distilvpr_lib.engine.evaluation.results.RetrievalResults` that both the
tables and the retrieval browser read.

Protocol, for every ordered pair (i = database run, j = query run) with i != j:

* embeddings are L2-normalised and ranked by cosine similarity (DistilVPR, ``normalize=True``) or
  ranked by Euclidean distance on the raw embeddings (original PointNetVLAD/MinkLoc KD-tree,
  ``normalize=False``);
* a query ``q`` of run j whose true-neighbour list ``query_sets[j][q][i]`` is empty (or absent) is
  skipped; ``N_eval(i, j)`` counts the others;
* for each evaluated query, the first rank ``r`` (0-based) whose retrieved database index is a
  true neighbour counts one hit at every N > r, so
  ``Recall@N(i, j) = 100 * #{q : r_q < N} / N_eval`` for N = 1..top_k;
* ``Recall@1%(i, j) = 100 * #{q : r_q < T_i} / N_eval`` with ``T_i = max(round(|DB_i| / 100), 1)``
  (Python's round, i.e. half to even, as the reference).

Reported: ``AR@N`` = mean over pairs of Recall@N, ``AR@1%`` likewise, and the per-database-run
``AR@1`` = mean over j != i of Recall@1(i, j).

Deliberate differences from the reference code (documented, docs/METHOD.md §8):

* **Recall@1% is exact.** The reference retrieves only the top 25 and so silently truncates
  ``T_i`` to 25 when ``|DB_i| > 2,500``. Here ``max(top_k, T_i)`` items are retrieved per query
  (capped at ``|DB_i|``), so Recall@1% is exact for any database size. For Oxford (databases of a
  few hundred sub-maps) the numbers are identical.
* **Small databases.** When ``|DB_i| < top_k`` only ``|DB_i|`` items exist; Recall@N for
  ``N > |DB_i|`` equals Recall@|DB_i| (the reference would crash in ``topk``).
* **Pairs without any evaluable query** (``N_eval = 0``) get NaN recalls in the per-pair table
  and are left out of the means (the reference divides by zero).
* Ties in the ranking are broken by the lowest database index (see :mod:`.search`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from distilvpr_lib.engine.evaluation.results import PairRetrieval, RetrievalResults, one_percent_k
from distilvpr_lib.engine.evaluation.search import get_backend
from distilvpr_lib.engine.evaluation.search import search as knn_search

#: Per-pair table columns holding a recall, besides ``recall@1%``.
_TABLE_RECALL_NS: tuple[int, ...] = (1, 5, 10)


# ---------------------------------------------------------------------------
# The protocol
# ---------------------------------------------------------------------------
def evaluate_retrieval(
    database_embeddings: Sequence[np.ndarray],
    query_embeddings: Sequence[np.ndarray],
    query_sets: Sequence[Mapping[int, Mapping[Any, Any]]],
    top_k: int = 25,
    normalize: bool = True,
    search: str = "torch",
    database_sets: Sequence[Mapping[int, Any]] | None = None,
    run_names: Sequence[str] | None = None,
    keep_retrievals: bool = True,
) -> RetrievalResults:
    """Evaluate place recognition by the PointNetVLAD protocol (see the module docstring).

    Args:
        database_embeddings: one (n_i, D) array per database run i (row r = database entry r).
        query_embeddings: one (m_j, D) array per query run j (row q = query entry q).
        query_sets: one dict per query run j, keys 0..m_j-1; ``query_sets[j][q][i]`` is the list
            of true-neighbour indices of query q in database run i (as the evaluation pickles).
        top_k: largest N of Recall@N.
        normalize: True = cosine on L2-normalised embeddings (DistilVPR); False = Euclidean on raw
            embeddings (original PointNetVLAD/MinkLoc KD-tree evaluation).
        search: search backend name (:data:`distilvpr_lib.engine.evaluation.search.SEARCH_BACKENDS`).
        database_sets: optional database dicts, only used to check the sizes agree.
        run_names: optional names, one per run index (default "0", "1", ...).
        keep_retrievals: keep per-pair retrieved indices/distances/matches (for the browser).
    Returns:
        :class:`RetrievalResults`.
    Raises:
        ValueError: inconsistent inputs (the message names the run / query at fault).
    """
    n_db, n_q = len(database_embeddings), len(query_embeddings)
    get_backend(search)  # unknown name -> KeyError now, not only when a pair has queries
    if top_k < 1:
        raise ValueError(f"evaluate_retrieval: top_k must be >= 1, got {top_k}")
    if len(query_sets) != n_q:
        raise ValueError(f"evaluate_retrieval: {n_q} query embedding sets but {len(query_sets)} query sets")
    if database_sets is not None and len(database_sets) != n_db:
        raise ValueError(f"evaluate_retrieval: {n_db} database embedding sets but {len(database_sets)} database sets")
    db_emb = [_check_embeddings(e, f"database run {i}") for i, e in enumerate(database_embeddings)]
    q_emb = [_check_embeddings(e, f"query run {j}") for j, e in enumerate(query_embeddings)]
    dims = {e.shape[1] for e in db_emb + q_emb if e.shape[0] > 0}
    if len(dims) > 1:
        raise ValueError(f"evaluate_retrieval: embeddings have different dimensions {sorted(dims)}")
    if database_sets is not None:
        for i, (emb, s) in enumerate(zip(db_emb, database_sets)):
            if len(s) != emb.shape[0]:
                raise ValueError(f"evaluate_retrieval: database run {i} has {len(s)} entries but {emb.shape[0]} embeddings")
    for j, (emb, s) in enumerate(zip(q_emb, query_sets)):
        if len(s) != emb.shape[0]:
            raise ValueError(f"evaluate_retrieval: query run {j} has {len(s)} entries but {emb.shape[0]} embeddings")
        if set(s.keys()) != set(range(len(s))):
            raise ValueError(f"evaluate_retrieval: query run {j}: keys must be 0..{len(s) - 1} (row order of the embeddings)")
    n_runs = max(n_db, n_q)
    names = [str(r) for r in range(n_runs)] if run_names is None else [str(r) for r in run_names]
    if len(names) < n_runs:
        raise ValueError(f"evaluate_retrieval: {len(names)} run names for {n_runs} runs")
    metric = "cosine" if normalize else "euclidean"

    rows: list[dict[str, Any]] = []
    curves: list[np.ndarray] = []
    retrievals: dict[tuple[int, int], PairRetrieval] = {}
    for i in range(n_db):
        size_i = db_emb[i].shape[0]
        t_i = one_percent_k(size_i)
        k_ret = min(size_i, max(top_k, t_i))
        # Evaluated queries of every query run j != i, searched together against database i.
        per_j: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for j in range(n_q):
            if j == i:
                continue
            per_j[j] = _true_neighbours(query_sets[j], i, j, size_i)
        stacked = [q_emb[j][per_j[j][0]] for j in per_j if len(per_j[j][0])]
        if stacked and size_i > 0:
            all_idx, all_dist = knn_search(db_emb[i], np.concatenate(stacked), k_ret, metric=metric, backend=search)
        else:
            all_idx = np.empty((0, k_ret), dtype=np.int64)
            all_dist = np.empty((0, k_ret), dtype=np.float32)
        offset = 0
        for j, (evaluated, truth) in per_j.items():
            e = len(evaluated)
            idx, dist = all_idx[offset : offset + e], all_dist[offset : offset + e]
            offset += e
            # truth: (e, L) padded with -1; a match = retrieved index equal to any true index.
            matches = (idx[:, :, None] == truth[:, None, :]).any(axis=2)
            pair = PairRetrieval(i, j, evaluated, idx, dist, matches, t_i)
            first = pair.first_match_rank
            hit = first >= 0
            if e > 0:
                ranks = np.where(hit, first, np.iinfo(np.int64).max)
                curve = 100.0 * (ranks[None, :] < np.arange(1, top_k + 1)[:, None]).sum(axis=1) / e
                r1p = 100.0 * float((ranks < t_i).sum()) / e
            else:
                curve = np.full(top_k, np.nan)
                r1p = math.nan
            row: dict[str, Any] = {
                "database_run": i,
                "query_run": j,
                "database_name": names[i],
                "query_name": names[j],
                "database_size": size_i,
                "n_queries": q_emb[j].shape[0],
                "n_queries_evaluated": e,
                "one_percent_k": t_i,
            }
            for n in _TABLE_RECALL_NS:
                if n <= top_k:
                    row[f"recall@{n}"] = float(curve[n - 1])
            row["recall@1%"] = r1p
            rows.append(row)
            curves.append(curve)
            if keep_retrievals:
                retrievals[(i, j)] = pair

    columns = ["database_run", "query_run", "database_name", "query_name", "database_size", "n_queries",
               "n_queries_evaluated", "one_percent_k"] + [f"recall@{n}" for n in _TABLE_RECALL_NS if n <= top_k] + ["recall@1%"]
    per_pair = pd.DataFrame(rows, columns=columns)
    curve_matrix = np.asarray(curves, dtype=np.float64).reshape(len(curves), top_k)
    evaluated = per_pair["n_queries_evaluated"].to_numpy() > 0
    if evaluated.any():
        recall_at_n = curve_matrix[evaluated].mean(axis=0)
        recall_at_1p = float(per_pair.loc[evaluated, "recall@1%"].mean())
    else:
        warnings.warn("evaluate_retrieval: no pair has a query with a true neighbour; all recalls are NaN", stacklevel=2)
        recall_at_n = np.full(top_k, np.nan)
        recall_at_1p = math.nan
    per_db = (
        per_pair.loc[evaluated].groupby("database_run")["recall@1"].mean().reindex(range(n_db)).astype(np.float64)
    )
    per_db.name = "AR@1"
    per_db.index.name = "database_run"
    return RetrievalResults(
        recall_at_n=recall_at_n,
        recall_at_1p=recall_at_1p,
        per_pair=per_pair,
        per_pair_recall_at_n=curve_matrix,
        per_database_recall_at_1=per_db,
        retrievals=retrievals,
        top_k=top_k,
        metric=metric,
        normalize=normalize,
        search_backend=search,
        run_names=names[:n_runs],
        database_sizes=[e.shape[0] for e in db_emb],
        query_sizes=[e.shape[0] for e in q_emb],
    )


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _check_embeddings(emb: Any, what: str) -> np.ndarray:
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise ValueError(f"evaluate_retrieval: {what}: embeddings must be 2-D (n, D), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ValueError(f"evaluate_retrieval: {what}: embeddings contain NaN or infinite values")
    return arr


def chance_recall_at_n(database_sets: Sequence[Mapping[int, Any]], query_sets: Sequence[Mapping[int, Mapping[Any, Any]]],
                       n: int = 1) -> float:
    """AR@n (percent) of a model that ranks each database at random: the floor a trained model must beat.

    For a query with ``t`` true neighbours in a database of ``D`` sub-maps, a random top-``n`` holds one with
    probability ``1 - C(D - t, n) / C(D, n)``; averaged like :func:`evaluate_retrieval` (over the evaluated
    queries of each (database, query) pair, then over the pairs that have any). Depends only on the sets.
    """
    pair_means = []
    for i, database in enumerate(database_sets):
        size = len(database)
        for j, query_set in enumerate(query_sets):
            if i == j or size == 0:
                continue
            chances = []
            for entry in query_set.values():
                t = len(set(entry.get(i, ())))
                if t:
                    k = min(n, size)
                    chances.append(1.0 - math.comb(size - t, k) / math.comb(size, k))
            if chances:
                pair_means.append(float(np.mean(chances)))
    return 100.0 * float(np.mean(pair_means)) if pair_means else math.nan


def _true_neighbours(query_set: Mapping[int, Mapping[Any, Any]], i: int, j: int, size_i: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of query set j with a true neighbour in database run i, and their neighbour lists
    padded with -1 to a (e, L) int64 array."""
    evaluated: list[int] = []
    lists: list[np.ndarray] = []
    key_seen = False
    for q in range(len(query_set)):
        entry = query_set[q]
        if i in entry:
            key_seen = True
            true = np.asarray(entry[i], dtype=np.int64).reshape(-1)
        else:
            true = np.empty(0, dtype=np.int64)
        if true.size == 0:
            continue
        if true.min() < 0 or true.max() >= size_i:
            raise ValueError(
                f"evaluate_retrieval: query run {j}, query {q}: true-neighbour index out of range "
                f"for database run {i} of size {size_i}"
            )
        evaluated.append(q)
        lists.append(true)
    if len(query_set) and not key_seen:
        raise ValueError(
            f"evaluate_retrieval: query run {j} has no neighbour lists for database run {i} "
            "(key absent in every query): do query_sets and database_embeddings align?"
        )
    width = max((len(t) for t in lists), default=0)
    padded = np.full((len(lists), max(width, 1)), -1, dtype=np.int64)
    for r, t in enumerate(lists):
        padded[r, : len(t)] = t
    return np.asarray(evaluated, dtype=np.int64), padded


__all__ = ["chance_recall_at_n", "evaluate_retrieval"]
