"""Which queries to look at, and what one query's retrieval picture needs (no drawing, no evaluation).

From ``{label: RetrievalResults}`` (see :mod:`~distilvpr_lib.analysis.run_results`): :func:`evaluated_queries`,
:func:`wrong_queries` and :func:`select_queries` list queries; :func:`query_view` gathers one query's
retrievals and places into a :class:`QueryView`; :func:`results_table` and :func:`retrieval_report`
summarise the models. Query indices are always rows of the query set of the query run (the keys of the
query pickle), i.e. the values of :attr:`PairRetrieval.query_indices`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd


def results_table(results: Mapping[str, Any]) -> "pd.DataFrame":
    """One row per model: AR@1, AR@5, AR@10, AR@1% and the number of evaluated queries it gets
    wrong at top-1 (over every pair)."""
    import pandas as pd

    rows = []
    for label, res in results.items():
        n_eval = sum(len(p.query_indices) for p in res.retrievals.values())
        n_wrong = sum(len(wrong_queries(res, i, j)) for i, j in res.retrievals)
        rows.append({"model": label, **res.summary(), "evaluated queries": n_eval, "wrong at top-1": n_wrong})
    return pd.DataFrame(rows, columns=["model"] if not rows else None).set_index("model")


def retrieval_report(results: Mapping[str, Any], rendered: Sequence[Mapping[str, Any]] = (),
                     student: str | None = None) -> dict[str, Any]:
    """A JSON-ready summary for notebook 05's ``metrics.json``.

    Keys: ``models`` (per label: AR@N, AR@1%, evaluated / wrong-at-top-1 counts), ``student``,
    ``right_wrong`` (for every ordered pair of models A, B: how many queries A gets right and B
    wrong at top-1), ``rendered`` (the records of :func:`render_queries`).
    """
    table = results_table(results)
    student = student or default_student(list(results))
    right_wrong: dict[str, int] = {}
    labels = list(results)
    for a in labels:
        for b in labels:
            if a == b:
                continue
            count = 0
            for i, j in results[labels[0]].retrievals:
                common = common_queries(results, i, j)
                wrong_a = set(wrong_queries(results[a], i, j).tolist())
                wrong_b = set(wrong_queries(results[b], i, j).tolist())
                count += sum(1 for q in common.tolist() if q not in wrong_a and q in wrong_b)
            right_wrong[f"{a} right, {b} wrong"] = count
    return {
        "models": {label: {k: (None if v != v else v) for k, v in row.items()} for label, row in
                   table.to_dict(orient="index").items()},
        "student": student,
        "right_wrong": right_wrong,
        "rendered": [dict(r) for r in rendered],
    }


def evaluated_queries(results: Any, database_run: int, query_run: int) -> np.ndarray:
    """(e,) int64 query indices of query run j evaluated against database run i (empty if none)."""
    key = (int(database_run), int(query_run))
    if key not in results.retrievals:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(results.retrievals[key].query_indices, dtype=np.int64)


def wrong_queries(results: Any, database_run: int, query_run: int, rank: int = 1) -> np.ndarray:
    """(w,) int64 query indices whose top-``rank`` retrievals hold no true match."""
    key = (int(database_run), int(query_run))
    if key not in results.retrievals:
        return np.zeros(0, dtype=np.int64)
    pair = results.retrievals[key]
    hit = np.asarray(pair.matches, dtype=bool)[:, :rank].any(axis=1) if pair.matches.size else np.zeros(len(pair.query_indices), bool)
    return np.asarray(pair.query_indices, dtype=np.int64)[~hit]


def common_queries(results: Mapping[str, Any], database_run: int, query_run: int) -> np.ndarray:
    """(c,) int64 query indices of the pair evaluated by every model of ``results``."""
    sets = [set(evaluated_queries(r, database_run, query_run).tolist()) for r in results.values()]
    common = set.intersection(*sets) if sets else set()
    return np.array(sorted(common), dtype=np.int64)


def default_student(labels: Sequence[str]) -> str | None:
    """The model whose mistakes the "wrong queries" filter uses: a label containing ``distilvpr``,
    else ``student``, else anything but ``teacher``, else the last label."""
    labels = list(labels)
    for tag in ("distilvpr", "student", "nokd", "no-kd"):
        for label in labels:
            if tag in label.lower():
                return label
    others = [l for l in labels if "teacher" not in l.lower()]
    return others[-1] if others else (labels[-1] if labels else None)


def select_queries(results: Mapping[str, Any], n: int = 4, student: str | None = None,
                   pairs: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int, int]]:
    """A fixed, deterministic list of ``(database_run, query_run, query_index)`` to render.

    Half (rounded up) are queries the ``student`` gets wrong at top-1 (when there are any), the rest
    queries it gets right; each half evenly spaced over all evaluated (pair, query) combinations.

    Args:
        results: ``{label: RetrievalResults}`` (queries evaluated by every model).
        n: how many.
        student: the model label whose mistakes count (default :func:`default_student`).
        pairs: restrict to these ``(database_run, query_run)`` pairs (default all, in order).
    """
    if not results:
        return []
    student = student or default_student(list(results))
    if student not in results:
        raise KeyError(f"unknown model {student!r}; known: {list(results)}")
    first = next(iter(results.values()))
    pairs = list(pairs) if pairs is not None else sorted(first.retrievals)
    wrong: list[tuple[int, int, int]] = []
    right: list[tuple[int, int, int]] = []
    for i, j in pairs:
        bad = set(wrong_queries(results[student], i, j).tolist())
        for q in common_queries(results, i, j).tolist():
            (wrong if q in bad else right).append((int(i), int(j), int(q)))

    def spread(items: list, count: int) -> list:
        if count <= 0 or not items:
            return []
        if count >= len(items):
            return list(items)
        return [items[int(x)] for x in np.linspace(0, len(items) - 1, count).round().astype(int)]

    n_wrong = min(len(wrong), (n + 1) // 2)
    chosen = spread(wrong, n_wrong) + spread(right, n - n_wrong)
    if len(chosen) < n:
        chosen += [c for c in spread(wrong, n) if c not in chosen][: n - len(chosen)]
    return sorted(chosen)


@dataclass
class QueryView:
    """Everything one query's retrieval picture needs (no images; see :class:`ImageSource`).

    Attributes:
        label: model label; database_run, query_run, query_index: the query.
        database_name, query_name: run names.
        query_rel: the query sub-map (path relative to the dataset).
        query_position: (2,) ``[northing, easting]``.
        retrieved_indices: (k,) database indices, nearest first.
        retrieved_rels: k sub-map paths. retrieved_positions: (k, 2).
        distances: (k,) embedding distances. matches: (k,) bool (within 25 m).
        place_distances_m: (k,) metres between the query and each retrieved place.
        true_neighbours: (t,) database indices within 25 m.
        database_positions: (n, 2); query_run_positions: (m, 2).
    """

    label: str
    database_run: int
    query_run: int
    query_index: int
    database_name: str
    query_name: str
    query_rel: str
    query_position: np.ndarray
    retrieved_indices: np.ndarray
    retrieved_rels: list[str]
    retrieved_positions: np.ndarray
    distances: np.ndarray
    matches: np.ndarray
    place_distances_m: np.ndarray
    true_neighbours: np.ndarray
    database_positions: np.ndarray
    query_run_positions: np.ndarray

    @property
    def correct_at_1(self) -> bool:
        """Whether the top-1 retrieved place is a true match."""
        return bool(len(self.matches) and self.matches[0])

    @property
    def first_match_rank(self) -> int:
        """1-based rank of the first true match among the shown items (0 = none)."""
        hits = np.flatnonzero(self.matches)
        return int(hits[0]) + 1 if len(hits) else 0


def _positions(run_set: Mapping[int, Mapping[Any, Any]]) -> np.ndarray:
    return np.array([[run_set[k]["northing"], run_set[k]["easting"]] for k in range(len(run_set))],
                    dtype=np.float64).reshape(-1, 2)


def query_view(benchmark: Any, results: Any, database_run: int, query_run: int, query_index: int,
               split: str = "test", top_k: int = 5, label: str = "") -> QueryView:
    """Gather one query's retrievals (from ``results``) and places (from ``benchmark``).

    Raises:
        KeyError: the pair was not evaluated or kept, or the query was not evaluated for it
            (it has no true neighbour in the database run).
    """
    i, j, q = int(database_run), int(query_run), int(query_index)
    pair = results.pair(i, j)
    rows = np.flatnonzero(np.asarray(pair.query_indices) == q)
    if len(rows) == 0:
        raise KeyError(f"query {q} of run {j} was not evaluated against database run {i} "
                       f"(no true neighbour within 25 m); evaluated: {np.asarray(pair.query_indices).tolist()[:20]}...")
    row = int(rows[0])
    k = min(int(top_k), pair.indices.shape[1])
    idx = np.asarray(pair.indices[row, :k], dtype=np.int64)
    db_set, q_set = benchmark.database_sets(split)[i], benchmark.query_sets(split)[j]
    db_pos, q_pos = _positions(db_set), _positions(q_set)
    entry = q_set[q]
    query_position = np.array([entry["northing"], entry["easting"]], dtype=np.float64)
    retrieved_positions = db_pos[idx] if len(idx) else np.zeros((0, 2))
    names = list(getattr(results, "run_names", []))
    return QueryView(
        label=label, database_run=i, query_run=j, query_index=q,
        database_name=names[i] if i < len(names) else str(i), query_name=names[j] if j < len(names) else str(j),
        query_rel=entry["query"], query_position=query_position, retrieved_indices=idx,
        retrieved_rels=[db_set[int(x)]["query"] for x in idx], retrieved_positions=retrieved_positions,
        distances=np.asarray(pair.distances[row, :k], dtype=np.float64),
        matches=np.asarray(pair.matches[row, :k], dtype=bool),
        place_distances_m=np.hypot(*(retrieved_positions - query_position).T) if len(idx) else np.zeros(0),
        true_neighbours=np.asarray(entry.get(i, []), dtype=np.int64).reshape(-1),
        database_positions=db_pos, query_run_positions=q_pos,
    )


__all__ = ["QueryView", "common_queries", "default_student", "evaluated_queries", "query_view", "results_table",
           "retrieval_report", "select_queries", "wrong_queries"]
