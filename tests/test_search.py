"""Exact search backends: agreement with a float64 brute force, deterministic ties, errors."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from distilvpr_lib.engine.evaluation.search import SEARCH_BACKENDS, get_backend, search

HAVE_FAISS = importlib.util.find_spec("faiss") is not None
BACKENDS = ["torch", "sklearn"] + (["faiss"] if HAVE_FAISS else [])


def brute_force(database: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 full distance matrix, stable sort (ties -> lowest index)."""
    db, q = database.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        db = db / np.linalg.norm(db, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        dist = 1.0 - q @ db.T
    else:
        dist = np.sqrt(((q[:, None, :] - db[None, :, :]) ** 2).sum(-1))
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_float64_brute_force(backend: str, metric: str) -> None:
    rng = np.random.default_rng(0)
    database = rng.normal(size=(500, 24)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(500, 1)).astype(np.float32)
    queries = rng.normal(size=(70, 24)).astype(np.float32)
    idx, dist = search(database, queries, 25, metric=metric, backend=backend)
    ref_idx, ref_dist = brute_force(database, queries, 25, metric)
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    assert idx.shape == dist.shape == (70, 25)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-5, atol=1e-6)
    assert (np.diff(dist, axis=1) >= 0).all()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_all_backends_agree_exactly_on_random_data(metric: str) -> None:
    rng = np.random.default_rng(1)
    database = rng.normal(size=(800, 32)).astype(np.float32)
    queries = np.concatenate([rng.normal(size=(60, 32)), database[:20] + 1e-7]).astype(np.float32)
    results = {b: search(database, queries, 30, metric=metric, backend=b) for b in BACKENDS}
    first_idx, first_dist = results[BACKENDS[0]]
    for name, (idx, dist) in results.items():
        np.testing.assert_array_equal(idx, first_idx, err_msg=f"{name} vs {BACKENDS[0]}")
        np.testing.assert_array_equal(dist, first_dist, err_msg=f"{name} vs {BACKENDS[0]}")


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_broken_by_lowest_index(backend: str, metric: str) -> None:
    # 40 copies of one vector (indices 5..44) and distinct others: the 10 nearest of a query
    # equal to that vector must be indices 5..14, for every backend.
    rng = np.random.default_rng(2)
    database = rng.normal(size=(100, 8)).astype(np.float32)
    database[5:45] = database[5]
    queries = database[[5, 5]]
    idx, dist = search(database, queries, 10, metric=metric, backend=backend)
    np.testing.assert_array_equal(idx, np.tile(np.arange(5, 15), (2, 1)))
    np.testing.assert_allclose(dist, 0.0, atol=1e-6)


def test_cosine_is_scale_invariant_and_euclidean_is_not() -> None:
    database = np.array([[1.0, 0.0], [10.0, 1.0]], dtype=np.float32)
    query = np.array([[2.0, 0.5]], dtype=np.float32)
    idx_cos, dist_cos = search(database, query, 2, metric="cosine")
    idx_euc, dist_euc = search(database, query, 2, metric="euclidean")
    assert idx_cos.tolist() == [[1, 0]]
    assert idx_euc.tolist() == [[0, 1]]
    np.testing.assert_allclose(dist_euc[0], [np.hypot(1.0, 0.5), np.hypot(8.0, 0.5)], rtol=1e-6)
    np.testing.assert_allclose(dist_cos[0, 1], 1.0 - 2.0 / np.hypot(2.0, 0.5), rtol=1e-5)


def test_k_equal_to_database_size_returns_a_full_ranking() -> None:
    rng = np.random.default_rng(3)
    database = rng.normal(size=(12, 4))
    queries = rng.normal(size=(3, 4))
    for backend in BACKENDS:
        idx, _ = search(database, queries, 12, backend=backend)
        assert sorted(idx[0].tolist()) == list(range(12))


def test_unknown_backend_lists_known_ones() -> None:
    with pytest.raises(KeyError, match="torch"):
        get_backend("annoy")
    assert set(SEARCH_BACKENDS) == {"torch", "sklearn", "faiss"}


def test_missing_faiss_names_the_install_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        search(np.ones((3, 2)), np.ones((1, 2)), 1, backend="faiss")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(database=np.ones((3, 2)), queries=np.ones((1, 3)), k=1), "dimension mismatch"),
        (dict(database=np.ones((3, 2)), queries=np.ones((1, 2)), k=4), "k=4"),
        (dict(database=np.ones((3, 2)), queries=np.ones((1, 2)), k=1, metric="manhattan"), "unknown metric"),
        (dict(database=np.full((3, 2), np.nan), queries=np.ones((1, 2)), k=1), "NaN"),
        (dict(database=np.ones(3), queries=np.ones((1, 2)), k=1), "2-D"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        search(**kwargs)


def test_no_queries_gives_empty_results() -> None:
    idx, dist = search(np.ones((3, 2)), np.empty((0, 2)), 2)
    assert idx.shape == (0, 2) and dist.shape == (0, 2)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_near_ties_below_float32_resolution_follow_the_float64_order(backend: str, metric: str) -> None:
    # 10 items at angles 1e-3 + j * 1e-6 rad from the query (1 - cos differs by ~1e-9 between them,
    # invisible in float32), stored in reverse order at indices 59..50; 50 far items elsewhere.
    rng = np.random.default_rng(4)
    far = rng.normal(size=(60, 3))
    far[:, 0] = -np.abs(far[:, 0]) - 1.0  # all on the other side of the query
    angles = 1e-3 + 1e-6 * np.arange(10)
    near = np.stack([np.cos(angles), np.sin(angles), np.zeros(10)], axis=1)
    database = far.copy()
    database[59 - np.arange(10)] = near
    query = np.array([[1.0, 0.0, 0.0]])
    idx, dist = search(database, query, 5, metric=metric, backend=backend)
    np.testing.assert_array_equal(idx[0], [59, 58, 57, 56, 55])
    ref_idx, _ = brute_force(database, query, 5, metric)
    np.testing.assert_array_equal(idx, ref_idx)
