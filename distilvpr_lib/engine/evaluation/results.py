"""The results of the PointNetVLAD protocol (:func:`~distilvpr_lib.engine.evaluation.evaluate.evaluate_retrieval`):
:class:`RetrievalResults` — the recalls, the per-pair table, and every query's retrievals
(:class:`PairRetrieval`) — that the tables, the notebooks and the retrieval browser read; saved to and
loaded from ``.npz`` / ``.json``; :func:`retrieval_summary` the dict written into ``metrics.json``.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd

_FORMAT_VERSION = 1


def one_percent_k(database_size: int) -> int:
    """``T = max(round(|DB| / 100), 1)``, the number of retrieved items for Recall@1%.

    Python's ``round`` (half to even), as in the PointNetVLAD/MinkLoc/DistilVPR code:
    ``|DB| = 250 -> 2``, ``350 -> 4``, ``3000 -> 30``.
    """
    return max(int(round(database_size / 100.0)), 1)


@dataclass(repr=False)
class PairRetrieval:
    """What was retrieved for the evaluated queries of one (database run, query run) pair.

    ``e`` = number of evaluated queries, ``r`` = retrieved items per query
    (``min(|DB_i|, max(top_k, T_i))``).

    Attributes:
        database_run, query_run: run indices i and j.
        query_indices: (e,) int64 rows of query set j that were evaluated (have a true neighbour in i).
        indices: (e, r) int64 retrieved database indices, nearest first.
        distances: (e, r) float32 distances (1 - cos when normalised, Euclidean otherwise).
        matches: (e, r) bool, True where the retrieved item is a true neighbour.
        one_percent_k: T_i.
    """

    database_run: int
    query_run: int
    query_indices: np.ndarray
    indices: np.ndarray
    distances: np.ndarray
    matches: np.ndarray
    one_percent_k: int

    @property
    def first_match_rank(self) -> np.ndarray:
        """(e,) int64: 0-based rank of the first true neighbour, -1 when none was retrieved."""
        if self.matches.shape[1] == 0:
            return np.full(self.matches.shape[0], -1, dtype=np.int64)
        first = np.argmax(self.matches, axis=1).astype(np.int64)
        first[~self.matches.any(axis=1)] = -1
        return first

    def __repr__(self) -> str:
        return (
            f"PairRetrieval(database_run={self.database_run}, query_run={self.query_run}, "
            f"evaluated={len(self.query_indices)}, retrieved_per_query={self.indices.shape[1]}, "
            f"T={self.one_percent_k})"
        )


@dataclass(repr=False)
class RetrievalResults:
    """Results of :func:`evaluate_retrieval` (all recalls in percent).

    Attributes:
        recall_at_n: (top_k,) float64, AR@N for N = 1..top_k (mean over evaluated pairs).
        recall_at_1p: AR@1% (mean over evaluated pairs).
        per_pair: one row per ordered pair (i != j), columns ``database_run, query_run,
            database_name, query_name, database_size, n_queries, n_queries_evaluated,
            one_percent_k, recall@1, recall@5, recall@10, recall@1%`` (``recall@N`` only for
            N <= top_k; NaN for a pair with no evaluated query).
        per_pair_recall_at_n: (n_pairs, top_k) float64, the full Recall@N curve of each row of
            ``per_pair``.
        per_database_recall_at_1: Series indexed by database run index: mean over j != i of
            Recall@1(i, j) (NaN for a run with no evaluated pair).
        retrievals: {(i, j): PairRetrieval} (empty when ``keep_retrievals=False``).
        top_k, metric, normalize, search_backend: settings used.
        run_names: one name per run index.
        database_sizes, query_sizes: number of items per database / query run.
    """

    recall_at_n: np.ndarray
    recall_at_1p: float
    per_pair: pd.DataFrame
    per_pair_recall_at_n: np.ndarray
    per_database_recall_at_1: pd.Series
    retrievals: dict[tuple[int, int], PairRetrieval] = field(default_factory=dict)
    top_k: int = 25
    metric: str = "cosine"
    normalize: bool = True
    search_backend: str = "torch"
    run_names: list[str] = field(default_factory=list)
    database_sizes: list[int] = field(default_factory=list)
    query_sizes: list[int] = field(default_factory=list)

    # ------------------------------------------------------------------ views
    @property
    def n_pairs_evaluated(self) -> int:
        """Number of pairs with at least one evaluated query (those averaged)."""
        return int((self.per_pair["n_queries_evaluated"] > 0).sum())

    def recall_at(self, n: int) -> float:
        """AR@n for 1 <= n <= top_k."""
        if not 1 <= n <= self.top_k:
            raise ValueError(f"recall_at: n={n} outside 1..top_k={self.top_k}")
        return float(self.recall_at_n[n - 1])

    def summary(self) -> dict[str, float]:
        """``{"AR@1", "AR@5", "AR@10", "AR@1%"}`` (AR@N only for N <= top_k)."""
        out = {f"AR@{n}": self.recall_at(n) for n in (1, 5, 10) if n <= self.top_k}
        out["AR@1%"] = float(self.recall_at_1p)
        return out

    def pair(self, database_run: int, query_run: int) -> PairRetrieval:
        """The retrievals of one pair (KeyError when not kept / not a pair)."""
        key = (int(database_run), int(query_run))
        if key not in self.retrievals:
            raise KeyError(
                f"no retrievals stored for pair {key}"
                + ("" if self.retrievals else " (evaluated with keep_retrievals=False)")
            )
        return self.retrievals[key]

    def pair_matrix(self, column: str = "recall@1") -> pd.DataFrame:
        """A (database run x query run) table of one per-pair column, for heat maps."""
        if column not in self.per_pair.columns:
            raise KeyError(f"unknown per-pair column {column!r}; known: {list(self.per_pair.columns)}")
        table = self.per_pair.pivot(index="database_name", columns="query_name", values=column)
        names = [n for n in self.run_names if n in table.index or n in table.columns]
        return table.reindex(index=[n for n in names if n in table.index], columns=[n for n in names if n in table.columns])

    # ------------------------------------------------------------ serialising
    def to_dict(self, include_retrievals: bool = False) -> dict[str, Any]:
        """A JSON-serialisable dict (NaN -> None); retrieval arrays only if asked."""
        out: dict[str, Any] = {
            "format": "distilvpr.RetrievalResults",
            "version": _FORMAT_VERSION,
            "summary": _clean(self.summary()),
            "top_k": int(self.top_k),
            "metric": self.metric,
            "normalize": bool(self.normalize),
            "search_backend": self.search_backend,
            "run_names": list(self.run_names),
            "database_sizes": [int(v) for v in self.database_sizes],
            "query_sizes": [int(v) for v in self.query_sizes],
            "recall_at_n": _clean(self.recall_at_n.tolist()),
            "recall_at_1p": _clean(float(self.recall_at_1p)),
            "per_pair": _clean(self.per_pair.to_dict(orient="list")),
            "per_pair_recall_at_n": _clean(self.per_pair_recall_at_n.tolist()),
            "per_database_recall_at_1": _clean({str(k): float(v) for k, v in self.per_database_recall_at_1.items()}),
        }
        if include_retrievals:
            out["retrievals"] = [
                {
                    "database_run": p.database_run,
                    "query_run": p.query_run,
                    "one_percent_k": p.one_percent_k,
                    "retrieved_per_query": int(p.indices.shape[1]),
                    "query_indices": p.query_indices.tolist(),
                    "indices": p.indices.tolist(),
                    "distances": p.distances.astype(float).tolist(),
                    "matches": p.matches.astype(int).tolist(),
                }
                for p in self.retrievals.values()
            ]
        return out

    def to_json(self, include_retrievals: bool = False, indent: int | None = 2) -> str:
        """:meth:`to_dict` as strict JSON text."""
        return json.dumps(self.to_dict(include_retrievals), indent=indent, allow_nan=False)

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically. ``*.json``: JSON with everything (retrievals as lists);
        any other suffix (``*.npz`` recommended): one ``.npz`` archive with the metadata as JSON and
        the retrieval arrays as arrays (compact; the format the browser reads). Returns the path."""
        path = Path(path)
        if path.suffix.lower() == ".json":
            data = self.to_json(include_retrievals=True, indent=None).encode()
        else:
            arrays: dict[str, np.ndarray] = {
                "meta_json": np.frombuffer(self.to_json(include_retrievals=False, indent=None).encode(), dtype=np.uint8)
            }
            for (i, j), p in self.retrievals.items():
                prefix = f"pair_{i}_{j}_"
                arrays[prefix + "query_indices"] = p.query_indices
                arrays[prefix + "indices"] = p.indices
                arrays[prefix + "distances"] = p.distances
                arrays[prefix + "matches"] = p.matches
                arrays[prefix + "one_percent_k"] = np.asarray(p.one_percent_k, dtype=np.int64)
            buffer = io.BytesIO()
            np.savez_compressed(buffer, **arrays)
            data = buffer.getvalue()
        _atomic_write_bytes(path, data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RetrievalResults":
        """Read a file written by :meth:`save` (``.json`` or ``.npz``)."""
        path = Path(path)
        try:
            if path.suffix.lower() == ".json":
                d = json.loads(path.read_text())
                retrievals = {}
                for r in d.get("retrievals", []):
                    p = PairRetrieval(
                        database_run=int(r["database_run"]),
                        query_run=int(r["query_run"]),
                        query_indices=np.asarray(r["query_indices"], dtype=np.int64),
                        indices=_as_2d(r["indices"], np.int64, r),
                        distances=_as_2d(r["distances"], np.float32, r),
                        matches=_as_2d(r["matches"], bool, r),
                        one_percent_k=int(r["one_percent_k"]),
                    )
                    retrievals[(p.database_run, p.query_run)] = p
            else:
                with np.load(path, allow_pickle=False) as z:
                    d = json.loads(z["meta_json"].tobytes().decode())
                    retrievals = {}
                    for name in z.files:
                        if name.startswith("pair_") and name.endswith("_indices") and not name.endswith("query_indices"):
                            i, j = (int(v) for v in name.split("_")[1:3])
                            prefix = f"pair_{i}_{j}_"
                            retrievals[(i, j)] = PairRetrieval(
                                database_run=i,
                                query_run=j,
                                query_indices=z[prefix + "query_indices"],
                                indices=z[prefix + "indices"],
                                distances=z[prefix + "distances"],
                                matches=z[prefix + "matches"],
                                one_percent_k=int(z[prefix + "one_percent_k"]),
                            )
                    retrievals = dict(sorted(retrievals.items()))
            if d.get("format") != "distilvpr.RetrievalResults":
                raise ValueError("not a RetrievalResults file (missing format tag)")
        except (OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read RetrievalResults: {exc}") from exc
        per_pair = pd.DataFrame({k: _unclean(v) for k, v in d["per_pair"].items()})
        top_k = int(d["top_k"])
        return cls(
            recall_at_n=np.asarray(_unclean(d["recall_at_n"]), dtype=np.float64),
            recall_at_1p=float(_unclean(d["recall_at_1p"])),
            per_pair=per_pair,
            per_pair_recall_at_n=np.asarray(_unclean(d["per_pair_recall_at_n"]), dtype=np.float64).reshape(-1, top_k),
            per_database_recall_at_1=pd.Series(
                {int(k): float(_unclean(v)) for k, v in d["per_database_recall_at_1"].items()},
                name="AR@1",
                dtype=np.float64,
            ).rename_axis("database_run"),
            retrievals=retrievals,
            top_k=top_k,
            metric=d["metric"],
            normalize=bool(d["normalize"]),
            search_backend=d["search_backend"],
            run_names=list(d["run_names"]),
            database_sizes=list(d["database_sizes"]),
            query_sizes=list(d["query_sizes"]),
        )

    # -------------------------------------------------------------- display
    def __repr__(self) -> str:
        how = "cosine on L2-normalised embeddings" if self.normalize else "Euclidean on raw embeddings"
        n_db, n_q = len(self.database_sizes), len(self.query_sizes)
        n_eval = int(self.per_pair["n_queries_evaluated"].sum()) if len(self.per_pair) else 0
        lines = [
            f"RetrievalResults: {how}, search={self.search_backend!r}, top_k={self.top_k}",
            f"  {n_db} database runs x {n_q} query runs: {len(self.per_pair)} pairs "
            f"({self.n_pairs_evaluated} evaluated), {n_eval:,} query retrievals",
            "  " + "   ".join(f"{k} = {_fmt(v)}" for k, v in self.summary().items()),
        ]
        per_db = self.per_database_recall_at_1.dropna()
        if len(per_db) > 1:
            worst, best = per_db.idxmin(), per_db.idxmax()
            lines.append(
                f"  per-database AR@1: worst {_fmt(per_db[worst])} ({self._name(worst)}), "
                f"best {_fmt(per_db[best])} ({self._name(best)})"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:  # notebook display
        summary = "".join(f"<th>{k}</th>" for k in self.summary())
        values = "".join(f"<td>{_fmt(v)}</td>" for v in self.summary().values())
        head = self.__repr__().splitlines()
        return (
            f"<div><b>{head[0]}</b><br>{head[1].strip()}"
            f"<table><tr>{summary}</tr><tr>{values}</tr></table></div>"
        )

    def _name(self, run: int) -> str:
        return self.run_names[run] if 0 <= run < len(self.run_names) else str(run)


def retrieval_summary(results: "RetrievalResults") -> dict[str, Any]:
    """``{"AR@1", "AR@5", "AR@10", "AR@1%", "per_run_AR@1": {run_name: AR@1}}`` (NaN -> None)."""
    out: dict[str, Any] = {k: _finite_or_none(v) for k, v in results.summary().items()}
    names = list(results.run_names)
    per_run = {}
    for index, value in results.per_database_recall_at_1.items():
        name = names[int(index)] if isinstance(index, numbers.Integral) and 0 <= int(index) < len(names) else str(index)
        per_run[name] = _finite_or_none(value)
    out["per_run_AR@1"] = per_run
    return out


def _finite_or_none(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _unclean(obj: Any) -> Any:
    """Inverse of :func:`_clean` for numbers: None -> NaN, recursively in lists."""
    if obj is None:
        return math.nan
    if isinstance(obj, list):
        return [_unclean(v) for v in obj]
    return obj


def _as_2d(values: list, dtype: Any, record: Mapping[str, Any]) -> np.ndarray:
    return np.asarray(values, dtype=dtype).reshape(len(record["query_indices"]), int(record["retrieved_per_query"]))


def _fmt(value: float) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.2f}"


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (the project's :func:`distilvpr_lib.data.files.atomic_write`)."""
    from distilvpr_lib.data.files import atomic_write

    with atomic_write(path, "wb") as handle:
        handle.write(data)


__all__ = ["PairRetrieval", "RetrievalResults", "one_percent_k", "retrieval_summary"]
