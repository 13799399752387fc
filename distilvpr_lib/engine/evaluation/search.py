"""Exact nearest-neighbour search backends for place-recognition retrieval.

One public entry point, :func:`search`, and a registry :data:`SEARCH_BACKENDS` of exact
backends (name -> factory):

``"torch"``   brute force, chunked float32 matmul + ``topk`` (the DistilVPR reference uses
              ``torch.topk`` over cosine scores).
``"sklearn"`` ``sklearn.neighbors.KDTree`` (the original PointNetVLAD / MinkLoc evaluation used a
              KD-tree; exact, but slow in high dimension).
``"faiss"``   ``faiss.IndexFlatIP`` / ``IndexFlatL2`` (exact, optional dependency: ``pip install
              faiss-cpu`` or the project's ``faiss`` extra), imported lazily.

Metrics
-------
``"cosine"``     distance = 1 - cos(q, x) = 1 - <q/|q|, x/|x|>, in [0, 2].
``"euclidean"``  distance = |q - x|_2 on the raw vectors.

Determinism across backends
---------------------------
Each backend only proposes *candidates*: the ``k + margin`` best items under its own
(float32) arithmetic, with approximate keys. The result is the exact float64 ranking with ties
broken by the lowest database index, reached without re-scoring everything:

* a query whose approximate keys of ranks 1..k+1 are all separated by more than the float32 error
  bound keeps the backend's order (it is provably the exact order);
* a query with a near-tie there has its candidates re-scored in float64 with one shared
  elementwise formula and ordered by (distance, index);
* a query whose candidate list cannot be guaranteed to contain the exact top-k (the gap between
  the k-th and the last candidate is within the error bound, e.g. many duplicate vectors) is
  searched exhaustively in float64.

The returned distances are always recomputed in float64 by the shared formula, so every backend
returns bit-identical indices and distances.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from distilvpr_lib.optional import require

METRICS: tuple[str, ...] = ("cosine", "euclidean")

#: Float32 working-set budget (elements) of one chunk of the brute-force score matrix.
_CHUNK_ELEMENTS: int = 1 << 25
#: Block size (elements) of the float64 re-scoring; a few MB keeps the temporaries in cache.
_REFINE_CHUNK_ELEMENTS: int = 1 << 20
#: Gap (relative to the key's scale) below which two approximate keys are "possibly tied": about
#: 100x the largest float32 error measured for torch / faiss inner products (D = 16..2048).
_RELATIVE_TOLERANCE: float = 2e-5


class CandidateBackend(Protocol):
    """A backend proposes, per query, its ``k`` best database items (approximately ordered).

    ``__call__(database (n, D) float32, queries (m, D) float32, k, metric)`` returns
    ``indices (m, k) int64`` and ``keys (m, k) float64`` where the key is the backend's own estimate
    of the squared Euclidean distance (``metric="euclidean"``) or of ``1 - cos`` (``"cosine"``),
    ascending. For ``"cosine"`` the inputs are already L2-normalised.
    """

    def __call__(self, database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
        ...


# ---------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------
def _torch_candidates(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Brute force in float32 with torch: chunked ``queries @ database.T`` + ``topk``."""
    import torch

    db = torch.from_numpy(np.ascontiguousarray(database, dtype=np.float32))
    qs = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    n, m = db.shape[0], qs.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    out_idx = np.empty((m, k), dtype=np.int64)
    out_key = np.empty((m, k), dtype=np.float64)
    db_sq = (db * db).sum(dim=1) if metric == "euclidean" else None
    with torch.no_grad():
        for start in range(0, m, chunk):
            q = qs[start : start + chunk]
            scores = q @ db.T  # (c, n) inner products
            if metric == "cosine":
                key = 1.0 - scores
            else:
                key = (q * q).sum(dim=1, keepdim=True) + db_sq[None, :] - 2.0 * scores
            values, indices = torch.topk(key, k, dim=1, largest=False, sorted=True)
            out_idx[start : start + chunk] = indices.numpy()
            out_key[start : start + chunk] = values.double().numpy()
    return out_idx, out_key


def _sklearn_candidates(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact KD-tree search (``sklearn.neighbors.KDTree``), the original PointNetVLAD evaluator."""
    from sklearn.neighbors import KDTree

    tree = KDTree(np.asarray(database, dtype=np.float64))
    dist, idx = tree.query(np.asarray(queries, dtype=np.float64), k=k, return_distance=True, sort_results=True)
    sq = dist.astype(np.float64) ** 2
    # On unit vectors |q - x|^2 = 2 - 2 cos, so 1 - cos = |q - x|^2 / 2.
    key = sq / 2.0 if metric == "cosine" else sq
    return idx.astype(np.int64), key


def _import_faiss():  # pragma: no cover - trivial
    return require("faiss", "search backend 'faiss'")


def _faiss_candidates(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact flat index of faiss (IndexFlatIP on unit vectors for cosine, IndexFlatL2 otherwise)."""
    faiss = _import_faiss()
    db = np.ascontiguousarray(database, dtype=np.float32)
    qs = np.ascontiguousarray(queries, dtype=np.float32)
    index = faiss.IndexFlatIP(db.shape[1]) if metric == "cosine" else faiss.IndexFlatL2(db.shape[1])
    index.add(db)
    values, idx = index.search(qs, k)
    values = values.astype(np.float64)
    key = 1.0 - values if metric == "cosine" else values  # IndexFlatL2 returns squared distances
    return idx.astype(np.int64), key


#: Registry of exact search backends: name -> candidate function (see :class:`CandidateBackend`).
SEARCH_BACKENDS: dict[str, Callable[[np.ndarray, np.ndarray, int, str], tuple[np.ndarray, np.ndarray]]] = {
    "torch": _torch_candidates,
    "sklearn": _sklearn_candidates,
    "faiss": _faiss_candidates,
}


def get_backend(name: str) -> Callable[[np.ndarray, np.ndarray, int, str], tuple[np.ndarray, np.ndarray]]:
    """Look a search backend up by name.

    Raises:
        KeyError: unknown name (the message lists the known ones).
        ImportError: ``"faiss"`` without faiss installed (the message names ``pip install faiss-cpu``).
    """
    if name not in SEARCH_BACKENDS:
        raise KeyError(f"unknown search backend {name!r}; known backends: {sorted(SEARCH_BACKENDS)}")
    if name == "faiss":
        _import_faiss()
    return SEARCH_BACKENDS[name]


# ---------------------------------------------------------------------------
# Exact float64 re-scoring shared by all backends
# ---------------------------------------------------------------------------
def _l2_normalise64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _exact_distances(database64: np.ndarray, queries64: np.ndarray, candidates: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of each query to its candidate rows.

    Every element is computed by the same elementwise formula (product / difference, then a sum
    over the contiguous last axis), so a (query, item) pair gets bit-identical values whatever
    the block it is computed in; this is what makes all backends agree exactly.

    Args:
        database64: (n, D) float64 (unit rows for cosine).
        queries64: (m, D) float64 (unit rows for cosine).
        candidates: (m, c) int64 database indices.
    Returns:
        (m, c) float64 distances in the metric's units.
    """
    m, c = candidates.shape
    dim = database64.shape[1]
    out = np.empty((m, c), dtype=np.float64)
    cols = max(1, min(c, _REFINE_CHUNK_ELEMENTS // max(dim, 1)))
    rows = max(1, _REFINE_CHUNK_ELEMENTS // max(cols * dim, 1))
    for r0 in range(0, m, rows):
        q = queries64[r0 : r0 + rows, None, :]  # (r, 1, D)
        for c0 in range(0, c, cols):
            gathered = database64[candidates[r0 : r0 + rows, c0 : c0 + cols]]  # (r, cc, D)
            if metric == "cosine":
                out[r0 : r0 + rows, c0 : c0 + cols] = 1.0 - (gathered * q).sum(axis=-1)
            else:
                diff = gathered - q
                out[r0 : r0 + rows, c0 : c0 + cols] = np.sqrt((diff * diff).sum(axis=-1))
    return out


def _full_exact(database64: np.ndarray, queries64: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exhaustive float64 search of a (small) set of queries; ties -> lowest index (stable sort)."""
    n, m = database64.shape[0], queries64.shape[0]
    all_idx = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int64), (m, n)))
    dist = _exact_distances(database64, queries64, all_idx, metric)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order.astype(np.int64), np.take_along_axis(dist, order, axis=1)


def search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str = "cosine",
    backend: str = "torch",
    margin: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-nearest-neighbour search of ``queries`` in ``database``.

    Args:
        database: (n, D) float array.
        queries: (m, D) float array.
        k: neighbours per query; must satisfy 1 <= k <= n.
        metric: ``"cosine"`` (1 - cosine similarity; inputs need not be normalised) or
            ``"euclidean"`` (L2 distance on the raw vectors).
        backend: a name in :data:`SEARCH_BACKENDS`.
        margin: extra candidates requested from the backend before the exact float64
            re-ranking (default ``max(8, k)``).
    Returns:
        ``indices`` (m, k) int64, nearest first, ties broken by the lowest database index;
        ``distances`` (m, k) float32, non-decreasing along each row.
    Raises:
        KeyError: unknown backend; ValueError: bad shapes, ``k`` or metric.
    """
    database = np.asarray(database)
    queries = np.asarray(queries)
    if database.ndim != 2 or queries.ndim != 2:
        raise ValueError(f"search: database and queries must be 2-D, got shapes {database.shape} and {queries.shape}")
    if database.shape[1] != queries.shape[1]:
        raise ValueError(f"search: dimension mismatch, database D={database.shape[1]} vs queries D={queries.shape[1]}")
    if metric not in METRICS:
        raise ValueError(f"search: unknown metric {metric!r}; known metrics: {list(METRICS)}")
    n, m = database.shape[0], queries.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"search: k={k} must be between 1 and the database size {n}")
    if not (np.isfinite(database).all() and np.isfinite(queries).all()):
        raise ValueError("search: embeddings contain NaN or infinite values")
    candidates_fn = get_backend(backend)
    if m == 0:
        return np.empty((0, k), dtype=np.int64), np.empty((0, k), dtype=np.float32)

    if metric == "cosine":
        database64, queries64 = _l2_normalise64(database), _l2_normalise64(queries)
    else:
        database64, queries64 = database.astype(np.float64), queries.astype(np.float64)
    kc = min(n, k + (max(8, k) if margin is None else margin))
    cand_idx, cand_key = candidates_fn(database64.astype(np.float32), queries64.astype(np.float32), kc, metric)
    order = np.argsort(cand_key, axis=1, kind="stable")  # backends return sorted keys; make sure
    cand_idx = np.take_along_axis(cand_idx, order, axis=1)
    cand_key = np.take_along_axis(cand_key, order, axis=1)

    if metric == "cosine":
        scale = np.ones(m)
    else:
        scale = (queries64**2).sum(axis=1) + float((database64**2).sum(axis=1).max())
    tolerance = _RELATIVE_TOLERANCE * np.maximum(scale, 1e-12)

    # 1. Rows whose approximate order of the first k (+ the boundary with k+1) has no near-tie:
    #    that order is the exact one; only the k returned distances are recomputed in float64.
    indices = np.ascontiguousarray(cand_idx[:, :k])
    head = cand_key[:, : min(k + 1, kc)]
    ambiguous = (np.diff(head, axis=1) <= tolerance[:, None]).any(axis=1) if head.shape[1] > 1 else np.zeros(m, bool)
    # 2. Rows with a near-tie: re-score all candidates in float64 and sort by (distance, index).
    rows = np.flatnonzero(ambiguous)
    if rows.size:
        cand = cand_idx[rows]
        cand = np.take_along_axis(cand, np.argsort(cand, axis=1, kind="stable"), axis=1)
        dist = _exact_distances(database64, queries64[rows], cand, metric)
        best = np.argsort(dist, axis=1, kind="stable")[:, :k]
        indices[rows] = np.take_along_axis(cand, best, axis=1)
    # 3. Rows whose candidate list may miss an exact top-k member: exhaustive float64 search.
    if kc < n:
        unsafe = np.flatnonzero(cand_key[:, kc - 1] - cand_key[:, k - 1] <= tolerance)
        if unsafe.size:
            indices[unsafe] = _full_exact(database64, queries64[unsafe], k, metric)[0]
    distances = _exact_distances(database64, queries64, indices, metric)
    return indices.astype(np.int64), distances.astype(np.float32)
