"""The PointNetVLAD evaluation protocol against hand computations (docs/METHOD.md §6)."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import pandas as pd
import pytest

from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval
from distilvpr_lib.engine.evaluation.results import RetrievalResults, one_percent_k


def unit(angles_deg) -> np.ndarray:
    """(n, 2) unit vectors at the given angles: cosine ranking = angular distance ranking."""
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype(np.float32)


def query_set(neighbour_lists: list[dict[int, list[int]]]) -> dict[int, dict]:
    """A query dict as in the pickles: {q: {'query', 'northing', 'easting', <run>: [db idx]}}."""
    return {
        q: {"query": f"run/pointcloud_20m/{q}.bin", "northing": 0.0, "easting": float(q), **lists}
        for q, lists in enumerate(neighbour_lists)
    }


# ---------------------------------------------------------------------------
# A hand-built 2-run case
# ---------------------------------------------------------------------------
# database run 0: angles 0, 10, 20, 30 (indices 0..3); database run 1: 100, 120, 140.
# pair (db 0, query run 1):
#   q0 @  1 deg, true [0]: ranking 0,1,2,3           -> first hit at rank 0
#   q1 @ 12 deg, true [2]: ranking 1,2,0,3           -> rank 1
#   q2 @ 26 deg, true [0]: ranking 3,2,1,0           -> rank 3
#   q3 @ 50 deg, true []                             -> skipped
#   R@1 = 1/3, R@2 = 2/3, R@3 = 2/3, R@4 = 1; |DB0| = 4 -> T = 1 -> R@1% = 1/3
# pair (db 1, query run 0):
#   p0 @ 118 deg, true [1]: ranking 1,0,2            -> rank 0
#   p1 @ 101 deg, true [2]: ranking 0,1,2            -> rank 2
#   p2 @ 150 deg, key absent                         -> skipped
#   R@1 = 1/2, R@2 = 1/2, R@3 = R@4 = 1 (|DB1| = 3 < top_k); T = 1 -> R@1% = 1/2
HAND_DB = [unit([0, 10, 20, 30]), unit([100, 120, 140])]
HAND_Q = [unit([118, 101, 150]), unit([1, 12, 26, 50])]
HAND_SETS = [
    query_set([{1: [1]}, {1: [2]}, {}]),
    query_set([{0: [0]}, {0: [2]}, {0: [0]}, {0: []}]),
]


@pytest.fixture(scope="module")
def hand_results() -> RetrievalResults:
    return evaluate_retrieval(HAND_DB, HAND_Q, HAND_SETS, top_k=4, run_names=["run-a", "run-b"])


def test_hand_built_two_run_case(hand_results: RetrievalResults) -> None:
    r = hand_results
    pair_01 = 100 * np.array([1 / 3, 2 / 3, 2 / 3, 1])  # (db 0, query 1)
    pair_10 = 100 * np.array([1 / 2, 1 / 2, 1, 1])  # (db 1, query 0)
    np.testing.assert_allclose(r.recall_at_n, (pair_01 + pair_10) / 2)
    assert r.recall_at(1) == pytest.approx((100 / 3 + 50) / 2)
    assert r.recall_at(2) == pytest.approx((200 / 3 + 50) / 2)
    assert r.recall_at_1p == pytest.approx((100 / 3 + 50) / 2)
    table = r.per_pair.set_index(["database_run", "query_run"])
    assert list(table.index) == [(0, 1), (1, 0)]
    assert table.loc[(0, 1), "n_queries_evaluated"] == 3
    assert table.loc[(1, 0), "n_queries_evaluated"] == 2
    assert table.loc[(0, 1), "recall@1"] == pytest.approx(100 / 3)
    assert table.loc[(1, 0), "recall@1%"] == pytest.approx(50)
    assert table.loc[(0, 1), "one_percent_k"] == 1
    assert table.loc[(0, 1), "database_name"] == "run-a" and table.loc[(0, 1), "query_name"] == "run-b"
    np.testing.assert_allclose(r.per_pair_recall_at_n, np.stack([pair_01, pair_10]))
    assert r.summary() == pytest.approx({"AR@1": (100 / 3 + 50) / 2, "AR@1%": (100 / 3 + 50) / 2})


def test_hand_built_retrievals_for_the_browser(hand_results: RetrievalResults) -> None:
    p = hand_results.pair(0, 1)
    np.testing.assert_array_equal(p.query_indices, [0, 1, 2])  # q3 (no true neighbour) skipped
    np.testing.assert_array_equal(p.indices, [[0, 1, 2, 3], [1, 2, 0, 3], [3, 2, 1, 0]])
    np.testing.assert_array_equal(p.first_match_rank, [0, 1, 3])
    assert p.matches.sum() == 3 and p.matches[1, 1] and p.matches[2, 3]
    np.testing.assert_allclose(p.distances[0, :2], 1 - np.cos(np.deg2rad([1, 9])), atol=1e-6)
    q = hand_results.pair(1, 0)
    np.testing.assert_array_equal(q.query_indices, [0, 1])  # p2: key absent -> skipped
    np.testing.assert_array_equal(q.indices, [[1, 0, 2], [0, 1, 2]])  # only |DB1| = 3 retrieved
    with pytest.raises(KeyError):
        hand_results.pair(0, 0)


def test_per_database_run_recall_at_1(hand_results: RetrievalResults) -> None:
    per_db = hand_results.per_database_recall_at_1
    assert per_db.loc[0] == pytest.approx(100 / 3)
    assert per_db.loc[1] == pytest.approx(50)


def test_per_database_mean_over_query_runs_in_three_runs() -> None:
    # 3 runs, one place each: run i's query 0 finds database 0 at rank 0 except query run 2 in db 0.
    db = [unit([0, 90]), unit([0, 90]), unit([0, 90])]
    qs = [unit([1]), unit([1]), unit([89])]
    sets = [query_set([{1: [0], 2: [0]}]), query_set([{0: [0], 2: [0]}]), query_set([{0: [0], 1: [0]}])]
    r = evaluate_retrieval(db, qs, sets, top_k=2)
    # pairs: (0,1)=100 (0,2)=0 (1,0)=100 (1,2)=0 (2,0)=100 (2,1)=100
    np.testing.assert_allclose(r.per_database_recall_at_1.to_numpy(), [50, 50, 100])
    assert r.recall_at(1) == pytest.approx(400 / 6)
    assert r.recall_at(2) == pytest.approx(100)
    assert len(r.per_pair) == 6
    matrix = r.pair_matrix("recall@1")
    assert matrix.shape == (3, 3) and math.isnan(matrix.loc["0", "0"]) and matrix.loc["0", "2"] == 0


# ---------------------------------------------------------------------------
# Synthetic 3-run benchmark: identical embeddings for co-located sub-maps
# ---------------------------------------------------------------------------
def test_identical_embeddings_for_colocated_submaps_give_perfect_recall() -> None:
    rng = np.random.default_rng(0)
    n_places, dim = 60, 16
    places = rng.normal(size=(n_places, dim)).astype(np.float32)
    orders = [rng.permutation(n_places) for _ in range(3)]  # each run visits the places in its own order
    db = [places[o] * rng.uniform(0.5, 2.0, size=(n_places, 1)).astype(np.float32) for o in orders]
    position = [np.argsort(o) for o in orders]  # position[i][p] = index of place p in run i
    sets = []
    for j in range(3):
        lists = [{i: [int(position[i][orders[j][q]])] for i in range(3) if i != j} for q in range(n_places)]
        sets.append(query_set(lists))
    r = evaluate_retrieval(db, db, sets)
    np.testing.assert_allclose(r.recall_at_n, 100.0)
    assert r.recall_at_1p == 100.0
    assert r.summary() == {"AR@1": 100.0, "AR@5": 100.0, "AR@10": 100.0, "AR@1%": 100.0}
    assert len(r.per_pair) == 6 and (r.per_pair["n_queries_evaluated"] == n_places).all()
    np.testing.assert_allclose(r.per_database_recall_at_1.to_numpy(), 100.0)
    # Shuffling one run's database embeddings breaks it (the metric can fail).
    broken = [db[0][rng.permutation(n_places)], db[1], db[2]]
    assert evaluate_retrieval(broken, db, sets).recall_at(1) < 80.0


# ---------------------------------------------------------------------------
# Recall@1%: T = max(round(|DB| / 100), 1), exact beyond 25
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "size, expected",
    [(1, 1), (49, 1), (50, 1), (51, 1), (149, 1), (150, 2), (250, 2), (350, 4), (2500, 25), (2549, 25), (3000, 30)],
)
def test_one_percent_rule(size: int, expected: int) -> None:
    # Python round is half-to-even, as in the reference (round(0.5) = 0 -> 1, round(2.5) = 2).
    assert one_percent_k(size) == expected


def ranked_database(size: int) -> np.ndarray:
    """Database item k at angle 0.05 k degrees: a query at -0.025 deg ranks item k at rank k."""
    return unit(0.05 * np.arange(size))


def test_recall_at_1_percent_exact_when_T_exceeds_top_k() -> None:
    # |DB0| = 3000 -> T = 30 > top_k = 25. True neighbours at ranks 5, 26, 29, 30 (0-based):
    # Recall@1% = 3/4 (the reference, capped at 25 retrieved, would report 1/4).
    size = 3000
    db = [ranked_database(size), unit([90, 91])]
    queries = [np.empty((0, 2), np.float32), unit([-0.025] * 4)]
    sets = [{}, query_set([{0: [5]}, {0: [26]}, {0: [29, 2999]}, {0: [30]}])]
    r = evaluate_retrieval(db, queries, sets, top_k=25)
    table = r.per_pair.set_index(["database_run", "query_run"])
    assert table.loc[(0, 1), "one_percent_k"] == 30
    assert table.loc[(0, 1), "recall@1%"] == pytest.approx(75.0)
    assert table.loc[(0, 1), "recall@1"] == 0.0
    assert r.recall_at(25) == pytest.approx(25.0)
    assert r.recall_at(6) == pytest.approx(25.0) and r.recall_at(5) == 0.0
    assert r.recall_at_1p == pytest.approx(75.0)  # pair (1, 0) has no query: not averaged
    assert table.loc[(1, 0), "n_queries_evaluated"] == 0 and math.isnan(table.loc[(1, 0), "recall@1"])
    p = r.pair(0, 1)
    assert p.indices.shape == (4, 30)  # max(top_k, T) retrieved
    np.testing.assert_array_equal(p.indices[0], np.arange(30))
    np.testing.assert_array_equal(p.first_match_rank, [5, 26, 29, -1])


def test_recall_at_1_percent_uses_T_smaller_than_top_k() -> None:
    # |DB| = 350 -> T = 4: hits at ranks 3 and 4 -> only the first counts for Recall@1%.
    db = [ranked_database(350), unit([90])]
    queries = [np.empty((0, 2), np.float32), unit([-0.025, -0.025])]
    sets = [{}, query_set([{0: [3]}, {0: [4]}])]
    r = evaluate_retrieval(db, queries, sets, top_k=25)
    assert r.recall_at_1p == pytest.approx(50.0)
    assert r.recall_at(4) == pytest.approx(50.0) and r.recall_at(5) == pytest.approx(100.0)


# ---------------------------------------------------------------------------
# Skipping, metric choice, errors
# ---------------------------------------------------------------------------
def test_queries_without_true_neighbours_are_skipped() -> None:
    db = [unit([0, 45, 90]), unit([0, 45, 90])]
    q1 = unit([1, 44, 89])
    sets = [query_set([{1: [0]}, {1: [1]}, {1: [2]}]), query_set([{0: []}, {0: [1]}, {}])]
    r = evaluate_retrieval(db, [q1, q1], sets, top_k=3)
    table = r.per_pair.set_index(["database_run", "query_run"])
    assert table.loc[(0, 1), "n_queries_evaluated"] == 1  # only query 1 of run 1 is evaluated
    assert table.loc[(1, 0), "n_queries_evaluated"] == 3
    assert r.per_pair["n_queries"].tolist() == [3, 3]
    # Were the skipped queries counted as misses, R@1 of (0, 1) would be 33.3; it is 100.
    assert table.loc[(0, 1), "recall@1"] == 100.0


def test_euclidean_on_raw_differs_from_cosine_when_norms_differ() -> None:
    # query (2, 0.5); database a = (1, 0) [true], b = (10, 1): cosine prefers b, Euclidean a.
    db = [np.array([[1.0, 0.0], [10.0, 1.0]], np.float32), unit([0])]
    queries = [np.empty((0, 2), np.float32), np.array([[2.0, 0.5]], np.float32)]
    sets = [{}, query_set([{0: [0]}])]
    cosine = evaluate_retrieval(db, queries, sets, top_k=2, normalize=True)
    euclid = evaluate_retrieval(db, queries, sets, top_k=2, normalize=False)
    assert cosine.recall_at(1) == 0.0 and cosine.recall_at(2) == 100.0
    assert euclid.recall_at(1) == 100.0
    assert cosine.metric == "cosine" and euclid.metric == "euclidean"
    np.testing.assert_allclose(euclid.pair(0, 1).distances[0], [np.hypot(1, 0.5), np.hypot(8, 0.5)], rtol=1e-6)


@pytest.mark.parametrize("backend", ["sklearn"] + (["faiss"] if importlib.util.find_spec("faiss") else []))
def test_backends_give_identical_results(hand_results: RetrievalResults, backend: str) -> None:
    rng = np.random.default_rng(5)
    db = [rng.normal(size=(120, 8)).astype(np.float32) for _ in range(3)]
    qs = [d[:40] + 0.3 * rng.normal(size=(40, 8)).astype(np.float32) for d in db]
    sets = [query_set([{i: [q, q + 1] for i in range(3) if i != j} for q in range(40)]) for j in range(3)]
    for normalize in (True, False):
        a = evaluate_retrieval(db, qs, sets, normalize=normalize, search="torch")
        b = evaluate_retrieval(db, qs, sets, normalize=normalize, search=backend)
        np.testing.assert_array_equal(a.recall_at_n, b.recall_at_n)
        for key in a.retrievals:
            np.testing.assert_array_equal(a.retrievals[key].indices, b.retrievals[key].indices)
    hand = evaluate_retrieval(HAND_DB, HAND_Q, HAND_SETS, top_k=4, search=backend)
    np.testing.assert_array_equal(hand.recall_at_n, hand_results.recall_at_n)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d, q, s: (d, q[:1], s), "query embedding sets"),
        (lambda d, q, s: (d, [q[0][:2], q[1]], s), "query run 0 has 3 entries but 2 embeddings"),
        (lambda d, q, s: (d, q, [query_set([{1: [7]}, {}, {}]), s[1]]), "out of range"),
        (lambda d, q, s: (d, q, [query_set([{}, {}, {}]), s[1]]), "no neighbour lists for database run 1"),
        (lambda d, q, s: ([d[0], np.ones((3, 5), np.float32)], q, s), "different dimensions"),
        (lambda d, q, s: ([d[0], np.full((3, 2), np.nan, np.float32)], q, s), "NaN"),
    ],
)
def test_inconsistent_inputs_raise_clear_errors(change, message: str) -> None:
    d, q, s = change(HAND_DB, HAND_Q, HAND_SETS)
    with pytest.raises(ValueError, match=message):
        evaluate_retrieval(d, q, s, top_k=4)


def test_database_sets_sizes_are_checked() -> None:
    with pytest.raises(ValueError, match="database run 1 has 2 entries but 3 embeddings"):
        evaluate_retrieval(HAND_DB, HAND_Q, HAND_SETS, top_k=4, database_sets=[{0: 0, 1: 0, 2: 0, 3: 0}, {0: 0, 1: 0}])


def test_unknown_search_backend_raises_key_error() -> None:
    with pytest.raises(KeyError, match="known backends"):
        evaluate_retrieval(HAND_DB, HAND_Q, HAND_SETS, top_k=4, search="annoy")


# ---------------------------------------------------------------------------
# Results object: save / load, dict, repr
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_round_trip(hand_results: RetrievalResults, tmp_path, suffix: str) -> None:
    path = hand_results.save(tmp_path / "sub" / f"results{suffix}")
    assert path.exists() and not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    loaded = RetrievalResults.load(path)
    np.testing.assert_array_equal(loaded.recall_at_n, hand_results.recall_at_n)
    assert loaded.recall_at_1p == hand_results.recall_at_1p
    pd.testing.assert_frame_equal(loaded.per_pair, hand_results.per_pair, check_dtype=False)
    np.testing.assert_array_equal(loaded.per_pair_recall_at_n, hand_results.per_pair_recall_at_n)
    pd.testing.assert_series_equal(loaded.per_database_recall_at_1, hand_results.per_database_recall_at_1, check_index_type=False)
    assert loaded.run_names == ["run-a", "run-b"] and loaded.top_k == 4 and loaded.normalize
    assert set(loaded.retrievals) == set(hand_results.retrievals)
    for key, p in hand_results.retrievals.items():
        q = loaded.retrievals[key]
        for name in ("query_indices", "indices", "distances", "matches"):
            np.testing.assert_array_equal(getattr(q, name), getattr(p, name))
            assert getattr(q, name).dtype == getattr(p, name).dtype, name
        assert q.one_percent_k == p.one_percent_k
    assert loaded.summary() == hand_results.summary()


def test_nan_pairs_survive_strict_json(tmp_path) -> None:
    db = [ranked_database(10), unit([90])]
    sets = [{}, query_set([{0: [0]}])]
    r = evaluate_retrieval(db, [np.empty((0, 2), np.float32), unit([0])], sets, top_k=3)
    text = r.to_json()
    json.loads(text)  # strict JSON (no NaN tokens)
    assert "NaN" not in text
    loaded = RetrievalResults.load(r.save(tmp_path / "r.json"))
    assert math.isnan(loaded.per_pair.set_index(["database_run", "query_run"]).loc[(1, 0), "recall@1"])


def test_load_rejects_foreign_files(tmp_path) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="other.json"):
        RetrievalResults.load(path)


def test_to_dict_summary_and_repr(hand_results: RetrievalResults) -> None:
    d = hand_results.to_dict()
    assert "retrievals" not in d and d["summary"]["AR@1"] == pytest.approx((100 / 3 + 50) / 2)
    assert len(hand_results.to_dict(include_retrievals=True)["retrievals"]) == 2
    text = repr(hand_results)
    assert "cosine on L2-normalised" in text and "AR@1 = 41.67" in text and "AR@1% = 41.67" in text
    assert "2 pairs (2 evaluated)" in text and "worst 33.33 (run-a)" in text
    assert "<table>" in hand_results._repr_html_()


def test_keep_retrievals_false_keeps_metrics_only() -> None:
    r = evaluate_retrieval(HAND_DB, HAND_Q, HAND_SETS, top_k=4, keep_retrievals=False)
    assert r.retrievals == {} and r.recall_at(1) == pytest.approx((100 / 3 + 50) / 2)
    with pytest.raises(KeyError, match="keep_retrievals=False"):
        r.pair(0, 1)


# ---------------------------------------------------------------------------
# Real Oxford fixture (two runs, 50 sub-maps each)
# ---------------------------------------------------------------------------
@pytest.mark.real_data
def test_position_oracle_on_real_oxford_pickles(oxford_real_dir) -> None:
    """Embedding = (northing, easting), Euclidean on raw: the nearest database sub-map of a query
    with any true neighbour (within 25 m) is within 25 m, so AR@1 = 100 exactly; 38 / 37 queries
    have a true neighbour (fixture README)."""
    from distilvpr_lib.data.pickles import load_pickle

    database_sets = load_pickle(oxford_real_dir / "oxford_evaluation_database.pickle")
    query_sets = load_pickle(oxford_real_dir / "oxford_evaluation_query.pickle")

    def positions(s: dict) -> np.ndarray:
        return np.array([[float(s[k]["northing"]), float(s[k]["easting"])] for k in range(len(s))])

    db = [positions(s) for s in database_sets]
    qs = [positions(s) for s in query_sets]
    r = evaluate_retrieval(db, qs, query_sets, normalize=False, database_sets=database_sets)
    table = r.per_pair.set_index(["database_run", "query_run"])
    assert table.loc[(1, 0), "n_queries_evaluated"] == 38
    assert table.loc[(0, 1), "n_queries_evaluated"] == 37
    assert r.recall_at(1) == 100.0 and r.recall_at_1p == 100.0
    # Positions shuffled within the database: the oracle breaks.
    rng = np.random.default_rng(0)
    shuffled = [d[rng.permutation(len(d))] for d in db]
    assert evaluate_retrieval(shuffled, qs, query_sets, normalize=False).recall_at(1) < 50.0
