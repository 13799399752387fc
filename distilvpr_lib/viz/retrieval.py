"""Retrieval pictures and the interactive retrieval browser (notebook 05).

Static, pure functions (headless-safe; they return new Figures):

* :func:`draw_retrieval` — a query image beside its top-k retrieved database images, each framed
  green (a true match: within 25 m of the query) or red, with its rank and distance.
* :func:`draw_retrieval_comparison` — the same, one row per model (teacher / no-KD / DistilVPR).
* :func:`draw_retrieval_map` — both runs on the map, the query, its true neighbours (with the 25 m
  circle) and the retrieved places of one or several models.
* :func:`render_query` / :func:`render_queries` — the above for queries of a benchmark and one or
  several :class:`~distilvpr_lib.engine.evaluate.RetrievalResults`, to Figures / PNG files.

Data access (no drawing): :func:`query_view` gathers what one query's picture needs from a
benchmark and a results object; :func:`evaluated_queries`, :func:`wrong_queries` and
:func:`select_queries` list queries.

Interactive: :class:`RetrievalBrowser`, an ipywidgets app (database run, query run, query slider
+ dropdown, model toggle, "compare models", "only queries the student gets wrong"); it renders with
the same static functions into ``ipywidgets.Image`` widgets, so its displayed query image changes
(new PNG bytes) whenever the query changes. ipywidgets is imported only when a browser is built.

Query indices are always rows of the query set of the query run (the keys of the query pickle),
i.e. the values of :attr:`PairRetrieval.query_indices`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from distilvpr_lib.viz._common import (
    MATCH_COLOUR,
    MISS_COLOUR,
    figure_png,
    frame_axes,
    new_figure,
    save_figure,
    show_image,
)

__all__ = [
    "QueryView",
    "draw_retrieval",
    "draw_retrieval_comparison",
    "draw_retrieval_map",
    "load_results",
    "gather_results",
    "results_table",
    "retrieval_report",
    "check_results",
    "evaluated_queries",
    "wrong_queries",
    "select_queries",
    "default_student",
    "query_view",
    "render_query",
    "render_queries",
    "ImageSource",
    "RetrievalBrowser",
]

#: The radius of a true match (PointNetVLAD evaluation), used for the circle on the map.
TRUE_MATCH_RADIUS_M = 25.0
_MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X")


# ---------------------------------------------------------------------------
# Static drawing
# ---------------------------------------------------------------------------
def _retrieval_row(axes: Sequence[Any], query_image: Any, retrieved_images: Sequence[Any], distances: Sequence[float],
                   matches: Sequence[bool], query_title: str | None, retrieved_titles: Sequence[str] | None,
                   row_label: str | None) -> None:
    show_image(axes[0], query_image, "query")
    axes[0].set_title(query_title or "query", fontsize=8)
    frame_axes(axes[0], "#1f3b73", 3.0)
    axes[0].set_gid("query")
    if row_label:
        axes[0].set_ylabel(row_label, fontsize=9, fontweight="bold")
    for k, ax in enumerate(axes[1:]):
        if k >= len(retrieved_images):
            ax.axis("off")
            continue
        show_image(ax, retrieved_images[k], f"#{k + 1}")
        good = bool(matches[k])
        frame_axes(ax, MATCH_COLOUR if good else MISS_COLOUR, 4.0)
        ax.set_gid(f"retrieved-{k}-{'match' if good else 'miss'}")
        text = f"#{k + 1}  d={float(distances[k]):.3f}"
        if retrieved_titles is not None and k < len(retrieved_titles) and retrieved_titles[k]:
            text += f"\n{retrieved_titles[k]}"
        ax.set_title(text, fontsize=7, color=MATCH_COLOUR if good else MISS_COLOUR)


def draw_retrieval(query_image: Any, retrieved_images: Sequence[Any], distances: Sequence[float] | np.ndarray,
                   matches: Sequence[bool] | np.ndarray, query_title: str | None = None,
                   retrieved_titles: Sequence[str] | None = None, title: str | None = None,
                   tile_size: float = 2.0) -> Figure:
    """A query beside its top-k retrieved database images, framed green (true match) or red.

    Args:
        query_image: PIL image, (H, W, 3) array or None (placeholder).
        retrieved_images: k images (same types), nearest first.
        distances: (k,) embedding distances, shown above each image.
        matches: (k,) bool, True where the retrieved place is within 25 m of the query.
        query_title: text above the query (default "query").
        retrieved_titles: k optional extra lines (e.g. the place's distance in metres).
        title: figure title.
        tile_size: inches per image.

    Returns:
        A Figure with ``1 + k`` axes: axes[0] the query, axes[1 + r] the r-th retrieved image whose
        spines are coloured :data:`MATCH_COLOUR` / :data:`MISS_COLOUR` (gid ``retrieved-<r>-match|miss``).
    """
    k = len(retrieved_images)
    distances = np.asarray(distances, dtype=np.float64).reshape(-1)
    matches = np.asarray(matches, dtype=bool).reshape(-1)
    if len(distances) != k or len(matches) != k:
        raise ValueError(f"draw_retrieval: {k} retrieved images but {len(distances)} distances and {len(matches)} match flags")
    fig = new_figure(tile_size * (k + 1) + 0.4, tile_size * 0.85 + 0.9)
    axes = fig.subplots(1, k + 1, squeeze=False)[0]
    _retrieval_row(axes, query_image, retrieved_images, distances, matches, query_title, retrieved_titles, None)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def draw_retrieval_comparison(rows: Sequence[Mapping[str, Any]], title: str | None = None,
                              tile_size: float = 2.0) -> Figure:
    """Several models on the same query: one :func:`draw_retrieval` row per model.

    Args:
        rows: dicts with ``label``, ``query_image``, ``retrieved_images``, ``distances``, ``matches``
            and optionally ``query_title``, ``retrieved_titles``.
        title: figure title.

    Returns:
        A Figure whose axes are laid out row by row (``1 + k`` per row, k = the largest top-k).
    """
    if not rows:
        raise ValueError("draw_retrieval_comparison: no rows")
    k = max(len(r["retrieved_images"]) for r in rows)
    fig = new_figure(tile_size * (k + 1) + 0.6, (tile_size * 0.85 + 0.75) * len(rows) + 0.4)
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, row in enumerate(rows):
        distances = np.asarray(row["distances"], dtype=np.float64).reshape(-1)
        matches = np.asarray(row["matches"], dtype=bool).reshape(-1)
        if len(distances) != len(row["retrieved_images"]) or len(matches) != len(row["retrieved_images"]):
            raise ValueError(f"draw_retrieval_comparison: row {row.get('label', r)!r}: images, distances and matches differ in length")
        _retrieval_row(axes[r], row["query_image"], row["retrieved_images"], distances, matches,
                       row.get("query_title"), row.get("retrieved_titles"), row.get("label"))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def draw_retrieval_map(database_positions: np.ndarray, query_position: Sequence[float],
                       true_neighbours: Sequence[int] | np.ndarray,
                       retrieved_indices: Sequence[int] | np.ndarray | Mapping[str, Sequence[int]],
                       matches: Sequence[bool] | np.ndarray | Mapping[str, Sequence[bool]],
                       query_run_positions: np.ndarray | None = None, database_name: str = "database run",
                       query_name: str = "query run", radius_m: float = TRUE_MATCH_RADIUS_M,
                       zoom_m: float | None = None, title: str | None = None) -> Figure:
    """Both runs on the map with the query, its true neighbours and the retrieved places.

    Args:
        database_positions: (n, 2) ``[northing, easting]`` of the database run's sub-maps.
        query_position: ``(northing, easting)`` of the query.
        true_neighbours: database indices within 25 m of the query (hollow green circles).
        retrieved_indices: (k,) database indices, nearest first — or ``{model label: (k,)}`` to
            overlay several models (one marker shape each).
        matches: (k,) bool (or ``{model label: (k,)}``), colouring each retrieved place green/red.
        query_run_positions: (m, 2) positions of the query run's sub-maps (light blue), optional.
        radius_m: radius of the circle around the query.
        zoom_m: half-width of the view around the query (None = both runs in full).
    Axes: easting (x), northing (y), metres; retrieved places are labelled with their rank.
    """
    db = np.asarray(database_positions, dtype=np.float64).reshape(-1, 2)
    qn, qe = (float(v) for v in query_position)
    if isinstance(retrieved_indices, Mapping):
        if not isinstance(matches, Mapping) or set(matches) != set(retrieved_indices):
            raise ValueError("draw_retrieval_map: give matches as a dict with the same model labels as retrieved_indices")
        retrieved = {str(k): (np.asarray(v, dtype=np.int64).reshape(-1), np.asarray(matches[k], dtype=bool).reshape(-1))
                     for k, v in retrieved_indices.items()}
    else:
        retrieved = {"": (np.asarray(retrieved_indices, dtype=np.int64).reshape(-1),
                          np.asarray(matches, dtype=bool).reshape(-1))}
    for label, (idx, ok) in retrieved.items():
        if len(idx) != len(ok):
            raise ValueError(f"draw_retrieval_map: {label or 'model'}: {len(idx)} retrieved indices but {len(ok)} match flags")
        if len(idx) and (idx.min() < 0 or idx.max() >= len(db)):
            raise ValueError(f"draw_retrieval_map: {label or 'model'}: retrieved index outside the database of {len(db)} places")
    true_idx = np.asarray(true_neighbours, dtype=np.int64).reshape(-1)
    fig = new_figure(6.2, 5.6)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(db[:, 1], db[:, 0], s=10, color="#9e9e9e", label=f"{database_name} (database)", zorder=1)
    if query_run_positions is not None:
        qp = np.asarray(query_run_positions, dtype=np.float64).reshape(-1, 2)
        ax.scatter(qp[:, 1], qp[:, 0], s=6, color="#9ecae1", label=f"{query_name} (queries' run)", zorder=1)
    if len(true_idx):
        ax.scatter(db[true_idx, 1], db[true_idx, 0], s=90, facecolors="none", edgecolors=MATCH_COLOUR, linewidths=1.5,
                   label=f"true neighbours ≤ {radius_m:g} m ({len(true_idx)})", zorder=3)
    ax.add_patch(Circle((qe, qn), radius_m, fill=False, linestyle=":", edgecolor=MATCH_COLOUR, zorder=2))
    for m, (label, (idx, ok)) in enumerate(retrieved.items()):
        marker = _MODEL_MARKERS[m % len(_MODEL_MARKERS)]
        colours = [MATCH_COLOUR if g else MISS_COLOUR for g in ok]
        name = f"retrieved by {label}" if label else "retrieved"
        ax.scatter(db[idx, 1], db[idx, 0], s=max(75 - 20 * m, 20), c=colours, marker=marker, edgecolors="k",
                   linewidths=0.5, label=f"{name} (green = match)", zorder=4 + 0.1 * m)
        for rank, i in enumerate(idx.tolist()):
            ax.annotate(str(rank + 1), (db[i, 1], db[i, 0]), textcoords="offset points", xytext=(4 + 7 * m, 4),
                        fontsize=7, color=colours[rank], zorder=5)
    ax.scatter([qe], [qn], s=220, marker="*", color="#1f3b73", edgecolors="white", label="query", zorder=6)
    if zoom_m is not None:
        ax.set_xlim(qe - zoom_m, qe + zoom_m)
        ax.set_ylim(qn - zoom_m, qn + zoom_m)
    ax.set_aspect("equal", adjustable="datalim")
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("easting [m]")
    ax.set_ylabel("northing [m]")
    ax.legend(fontsize=6, loc="best")
    ax.set_title(title or f"query of {query_name} in {database_name}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Results and queries
# ---------------------------------------------------------------------------
def load_results(files: Mapping[str, str | Path] | Sequence[str | Path] | str | Path) -> dict[str, Any]:
    """Load :class:`RetrievalResults` files into ``{label: results}``.

    Args:
        files: ``{label: path}``; a list of paths (labels = the parent folder's name, or the file
            stem when names repeat); or one path.
    Raises:
        ValueError: unreadable file (the message names it); FileNotFoundError: missing file.
    """
    from distilvpr_lib.engine.evaluate import RetrievalResults

    if isinstance(files, (str, Path)):
        files = [files]
    if not isinstance(files, Mapping):
        paths = [Path(p) for p in files]
        labels = [p.parent.name or p.stem for p in paths]
        if len(set(labels)) != len(labels):
            labels = [p.stem if p.parent.name else str(p) for p in paths]
        files = dict(zip(labels, paths))
    out: dict[str, Any] = {}
    for label, path in files.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: retrieval results file of {label!r} not found")
        out[str(label)] = RetrievalResults.load(path)
    return out


#: Results file a teacher folder / student run holds (``engine.run_folder``), read by :func:`gather_results`.
MODEL_TEST_RESULTS = "test_results.npz"


def gather_results(benchmark: Any, results: Mapping[str, str | Path] | None = None,
                   models: Mapping[str, str | Path] | None = None, split: str = "test",
                   progress: bool = False) -> dict[str, Any]:
    """Collect ``{label: RetrievalResults}`` for the browser from files and/or model folders.

    Args:
        benchmark: the loaded Benchmark the pictures are drawn from.
        results: ``{label: results file}`` (``.npz``/``.json`` written by ``RetrievalResults.save``).
        models: ``{label: teacher folder or student run}``. For the test split the folder's
            ``test_results.npz`` (written by the run pipelines) is used when it matches this
            benchmark; otherwise the model is evaluated on ``split`` of this benchmark with
            :func:`distilvpr_lib.engine.run_evaluation.evaluate_run` (loads ``config.json`` + weights).
        split: ``"test"`` or ``"validation"``.

    Returns:
        ``{label: RetrievalResults}`` in the order given (files first), all checked against the
        benchmark with :func:`check_results`.
    """
    from distilvpr_lib.engine.evaluate import RetrievalResults

    out: dict[str, Any] = dict(load_results(dict(results))) if results else {}
    for label, folder in (models or {}).items():
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: model folder of {label!r} not found")
        stored = folder / MODEL_TEST_RESULTS
        loaded = None
        if split == "test" and stored.is_file():
            loaded = RetrievalResults.load(stored)
            try:
                check_results({label: loaded}, benchmark, split)
            except ValueError:
                loaded = None  # computed on another dataset: evaluate on this one
        if loaded is None:
            from distilvpr_lib.engine.run_evaluation import evaluate_run

            image_dir = getattr(benchmark, "image_dir", None)
            _, loaded = evaluate_run(folder, dataset_dir=benchmark.dataset_dir, split=split, device="cpu",
                                     image_dir=image_dir if getattr(benchmark, "has_images", False) else None,
                                     progress=progress)
        out[str(label)] = loaded
    if not out:
        raise ValueError("gather_results: give at least one results file or model folder")
    check_results(out, benchmark, split)
    return out


def results_table(results: Mapping[str, Any]) -> "pd.DataFrame":  # noqa: F821
    """One row per model: AR@1, AR@5, AR@10, AR@1% and the number of evaluated queries it gets
    wrong at top-1 (over every pair)."""
    import pandas as pd

    rows = []
    for label, res in results.items():
        n_eval = sum(len(p.query_indices) for p in res.retrievals.values())
        n_wrong = sum(len(wrong_queries(res, i, j)) for i, j in res.retrievals)
        rows.append({"model": label, **res.summary(), "evaluated queries": n_eval, "wrong at top-1": n_wrong})
    return pd.DataFrame(rows).set_index("model")


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
    first = results[labels[0]]
    for a in labels:
        for b in labels:
            if a == b:
                continue
            count = 0
            for i, j in first.retrievals:
                common = _common_queries(results, i, j)
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


def check_results(results: Mapping[str, Any], benchmark: Any, split: str = "test") -> None:
    """Check that every results object was computed on ``benchmark``'s ``split`` (same set sizes)
    and kept its retrievals.

    Raises:
        ValueError: naming the model and what differs.
    """
    db_sizes = [len(s) for s in benchmark.database_sets(split)]
    q_sizes = [len(s) for s in benchmark.query_sets(split)]
    for label, res in results.items():
        if list(res.database_sizes) != db_sizes or list(res.query_sizes) != q_sizes:
            other = "validation" if split == "test" else "test"
            hint = ""
            if benchmark.has_split(other) and list(res.database_sizes) == [len(s) for s in benchmark.database_sets(other)]:
                hint = f" (they match the {other!r} split: pass split={other!r})"
            raise ValueError(
                f"results {label!r}: database sizes {list(res.database_sizes)} / query sizes {list(res.query_sizes)} "
                f"differ from the {split!r} split of {benchmark.dataset_dir} ({db_sizes} / {q_sizes}){hint}")
        if not res.retrievals:
            raise ValueError(f"results {label!r} hold no retrievals (evaluated with keep_retrievals=False)")


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


def _common_queries(results: Mapping[str, Any], database_run: int, query_run: int) -> np.ndarray:
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
        for q in _common_queries(results, i, j).tolist():
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


# ---------------------------------------------------------------------------
# Images of sub-maps (camera image, or the cloud's bird's-eye view when there is none)
# ---------------------------------------------------------------------------
class ImageSource:
    """Images of sub-maps for the retrieval pictures, cached.

    The nearest camera image of a sub-map when the benchmark has images; otherwise (e.g. the real
    Oxford LiDAR fixture) a bird's-eye view of its cloud, so the browser works on both.
    """

    def __init__(self, benchmark: Any, cache_size: int = 256) -> None:
        self.benchmark = benchmark
        self._array = functools.lru_cache(maxsize=cache_size)(self._load_array)
        self._png = functools.lru_cache(maxsize=cache_size)(self._load_png)

    @property
    def uses_camera(self) -> bool:
        return bool(getattr(self.benchmark, "has_images", False))

    def array(self, rel: str) -> np.ndarray:
        """(H, W, 3) uint8 image of a sub-map."""
        return self._array(rel)

    def png(self, rel: str) -> bytes:
        """PNG bytes of a sub-map's image (the file's bytes when it is a PNG)."""
        return self._png(rel)

    def _load_array(self, rel: str) -> np.ndarray:
        if self.uses_camera:
            return np.asarray(self.benchmark.read_image(rel))
        return cloud_thumbnail(self.benchmark.read_cloud(rel))

    def _load_png(self, rel: str) -> bytes:
        if self.uses_camera:
            path = Path(self.benchmark.image_path(rel))
            if path.suffix.lower() == ".png":
                return path.read_bytes()
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(self.array(rel)).save(buffer, format="PNG")
        return buffer.getvalue()


def cloud_thumbnail(cloud: np.ndarray, size_px: int = 160) -> np.ndarray:
    """(size_px, size_px, 3) uint8 bird's-eye view of a normalised cloud (colour = z)."""
    from matplotlib import colormaps

    cloud = np.asarray(cloud, dtype=np.float64).reshape(-1, 3)
    image = np.full((size_px, size_px, 3), 255, dtype=np.uint8)
    if len(cloud) == 0:
        return image
    lim = max(1.0, float(np.abs(cloud[:, :2]).max()))
    cols = np.clip(((cloud[:, 0] / lim + 1) / 2 * (size_px - 1)).round().astype(int), 0, size_px - 1)
    rows = np.clip(((1 - (cloud[:, 1] / lim + 1) / 2) * (size_px - 1)).round().astype(int), 0, size_px - 1)
    z = cloud[:, 2]
    span = float(z.max() - z.min()) or 1.0
    colours = (np.asarray(colormaps["viridis"]((z - z.min()) / span))[:, :3] * 255).astype(np.uint8)
    order = np.argsort(z)
    image[rows[order], cols[order]] = colours[order]
    return image


# ---------------------------------------------------------------------------
# Rendering queries
# ---------------------------------------------------------------------------
def _view_row(view: QueryView, images: ImageSource) -> dict[str, Any]:
    return {
        "label": view.label,
        "query_image": images.array(view.query_rel),
        "retrieved_images": [images.array(r) for r in view.retrieved_rels],
        "distances": view.distances,
        "matches": view.matches,
        "query_title": f"query {view.query_index} ({view.query_name})",
        "retrieved_titles": [f"{m:.0f} m away" for m in view.place_distances_m],
    }


def render_query(benchmark: Any, results: Mapping[str, Any], database_run: int, query_run: int, query_index: int,
                 split: str = "test", top_k: int = 5, models: Sequence[str] | None = None,
                 images: ImageSource | None = None, zoom_m: float | None = None) -> tuple[Figure, Figure, list[QueryView]]:
    """The retrieval picture (one row per model) and the map of one query.

    Args:
        benchmark: the loaded Benchmark the results were computed on.
        results: ``{label: RetrievalResults}``.
        models: labels to show (default all, in order).
        images: an :class:`ImageSource` to reuse (cache) across calls.
    Returns:
        ``(retrieval_figure, map_figure, views)``.
    """
    images = images or ImageSource(benchmark)
    labels = list(models) if models is not None else list(results)
    views = [query_view(benchmark, results[l], database_run, query_run, query_index, split, top_k, l) for l in labels]
    v0 = views[0]
    head = f"query {v0.query_index} of {v0.query_name} against database {v0.database_name} (top-{len(v0.matches)})"
    if len(views) == 1:
        row = _view_row(v0, images)
        fig = draw_retrieval(row["query_image"], row["retrieved_images"], row["distances"], row["matches"],
                             row["query_title"], row["retrieved_titles"], title=f"{v0.label}: {head}" if v0.label else head)
    else:
        fig = draw_retrieval_comparison([_view_row(v, images) for v in views], title=head)
    map_fig = draw_retrieval_map(
        v0.database_positions, v0.query_position, v0.true_neighbours,
        {v.label: v.retrieved_indices for v in views}, {v.label: v.matches for v in views},
        query_run_positions=v0.query_run_positions, database_name=v0.database_name, query_name=v0.query_name,
        zoom_m=zoom_m)
    return fig, map_fig, views


def render_queries(benchmark: Any, results: Mapping[str, Any], queries: Sequence[Sequence[int]], out_dir: str | Path,
                   split: str = "test", top_k: int = 5, models: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Render a fixed list of queries to PNG (headless runs of notebook 05).

    Writes ``retrieval_db<i>_q<j>_<index>.png`` and ``map_db<i>_q<j>_<index>.png`` per query.

    Returns:
        One record per query: ``database_run, query_run, query_index, retrieval_png, map_png`` and,
        per model, ``correct@1/<label>`` and ``first_match_rank/<label>``.
    """
    out_dir = Path(out_dir)
    images = ImageSource(benchmark)
    records = []
    for query in queries:
        i, j, q = (int(v) for v in query)
        fig, map_fig, views = render_query(benchmark, results, i, j, q, split, top_k, models, images)
        stem = f"db{i}_q{j}_{q}"
        record: dict[str, Any] = {
            "database_run": i, "query_run": j, "query_index": q,
            "retrieval_png": str(save_figure(fig, out_dir / f"retrieval_{stem}.png")),
            "map_png": str(save_figure(map_fig, out_dir / f"map_{stem}.png")),
        }
        for v in views:
            record[f"correct@1/{v.label}"] = v.correct_at_1
            record[f"first_match_rank/{v.label}"] = v.first_match_rank
        records.append(record)
    return records


# ---------------------------------------------------------------------------
# The interactive browser
# ---------------------------------------------------------------------------
class RetrievalBrowser:
    """An ipywidgets app to browse retrievals of one or several models.

    Controls: database run, query run, query (slider and dropdown, kept in sync), model
    (toggle buttons), "compare models" (one row per model, same query), "only queries <student>
    gets wrong" (top-1 miss). Views: the query image (:attr:`query_image`, an ``ipywidgets.Image``
    whose PNG bytes change with the query), the top-k picture (:attr:`retrieval_image`) and the
    map (:attr:`map_image`), all drawn by the static functions of this module.

    Display it as the last expression of a cell (or ``display(browser)``); drive it from code with
    :meth:`select`; read :attr:`state` to see what is shown.

    Args:
        benchmark: the loaded Benchmark the results were computed on.
        results: ``{label: RetrievalResults}`` (or one RetrievalResults).
        split: the split the results belong to.
        top_k: how many retrieved items to show.
        student: label whose mistakes the "wrong" filter uses (default :func:`default_student`).
        figure_dpi: resolution of the rendered pictures.
    """

    def __init__(self, benchmark: Any, results: Mapping[str, Any] | Any, split: str = "test", top_k: int = 5,
                 student: str | None = None, figure_dpi: int = 80) -> None:
        import ipywidgets as w

        if not isinstance(results, Mapping):
            results = {"model": results}
        if not results:
            raise ValueError("RetrievalBrowser: no results to browse")
        check_results(results, benchmark, split)
        self.benchmark = benchmark
        self.results: dict[str, Any] = dict(results)
        self.split = split
        self.top_k = int(top_k)
        self.figure_dpi = int(figure_dpi)
        self.labels = list(self.results)
        self.student = student or default_student(self.labels)
        if self.student not in self.results:
            raise KeyError(f"RetrievalBrowser: unknown student {self.student!r}; known: {self.labels}")
        self.images = ImageSource(benchmark)
        first = self.results[self.labels[0]]
        self.run_names = list(first.run_names) or [str(r) for r in range(len(first.database_sizes))]
        self.pairs = sorted(first.retrievals)
        self.views: list[QueryView] = []
        self.renders = 0
        self._busy = False

        start_i, start_j = self._first_pair()
        run_options = [(f"{r}: {n}", r) for r, n in enumerate(self.run_names)]
        self.database_run = w.Dropdown(options=run_options, value=start_i, description="database run",
                                       style={"description_width": "initial"})
        self.query_run = w.Dropdown(options=self._query_run_options(start_i), value=start_j, description="query run",
                                    style={"description_width": "initial"})
        self.query_slider = w.IntSlider(value=0, min=0, max=0, description="query #", continuous_update=False,
                                        style={"description_width": "initial"}, layout=w.Layout(width="420px"))
        self.query_dropdown = w.Dropdown(options=[], description="query", style={"description_width": "initial"})
        self.model = w.ToggleButtons(options=self.labels, value=self.labels[0], description="model",
                                     style={"description_width": "initial", "button_width": "auto"})
        self.compare = w.Checkbox(value=False, description="compare models", indent=False,
                                  disabled=len(self.labels) < 2)
        self.wrong_only = w.Checkbox(value=False, description=f"only queries {self.student} gets wrong", indent=False)
        self.status = w.HTML()
        self.query_image = w.Image(format="png", layout=w.Layout(width="260px"))
        self.retrieval_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.map_image = w.Image(format="png", layout=w.Layout(width="420px"))
        for widget, name in ((self.query_slider, "query-slider"), (self.query_dropdown, "query-dropdown"),
                             (self.query_image, "query-image"), (self.retrieval_image, "retrieval-image"),
                             (self.map_image, "map-image"), (self.database_run, "database-run"),
                             (self.query_run, "query-run"), (self.model, "model"), (self.compare, "compare"),
                             (self.wrong_only, "wrong-only"), (self.status, "status")):
            widget.add_class(f"distilvpr-{name}")

        self.database_run.observe(self._on_database_run, names="value")
        self.query_run.observe(self._on_filter, names="value")
        self.wrong_only.observe(self._on_filter, names="value")
        self.query_slider.observe(self._on_slider, names="value")
        self.query_dropdown.observe(self._on_dropdown, names="value")
        self.model.observe(self._on_render, names="value")
        self.compare.observe(self._on_render, names="value")

        self.widget = w.VBox([
            w.HBox([self.database_run, self.query_run]),
            w.HBox([self.query_slider, self.query_dropdown]),
            w.HBox([self.model, self.compare, self.wrong_only]),
            self.status,
            w.HBox([w.VBox([w.HTML("<b>query</b>"), self.query_image]), self.map_image]),
            self.retrieval_image,
        ])
        self.widget.add_class("distilvpr-retrieval-browser")
        self._refresh_queries()

    # ------------------------------------------------------------------ options
    def _first_pair(self) -> tuple[int, int]:
        for i, j in self.pairs:
            if len(self._candidates(i, j, False)):
                return i, j
        if not self.pairs:
            raise ValueError("RetrievalBrowser: the results hold no (database run, query run) pair")
        return self.pairs[0]

    def _query_run_options(self, database_run: int) -> list[tuple[str, int]]:
        return [(f"{j}: {self.run_names[j]}", j) for i, j in self.pairs if i == database_run]

    def _candidates(self, database_run: int, query_run: int, wrong_only: bool) -> np.ndarray:
        common = _common_queries(self.results, database_run, query_run)
        if wrong_only:
            bad = wrong_queries(self.results[self.student], database_run, query_run)
            common = common[np.isin(common, bad)]
        return common

    def available_queries(self) -> np.ndarray:
        """Query indices selectable under the current run pair and filter."""
        return self._candidates(self.database_run.value, self.query_run.value, self.wrong_only.value)

    # ------------------------------------------------------------------ events
    def _on_database_run(self, change: Any) -> None:
        i = int(change["new"])
        options = self._query_run_options(i)
        previous = self.query_run.value
        self._busy = True
        try:
            self.query_run.options = options
            values = [v for _, v in options]
            self.query_run.value = previous if previous in values else (values[0] if values else None)
        finally:
            self._busy = False
        self._refresh_queries()

    def _on_filter(self, change: Any) -> None:
        if not self._busy:
            self._refresh_queries()

    def _refresh_queries(self) -> None:
        queries = self.available_queries() if self.query_run.value is not None else np.zeros(0, np.int64)
        previous = self.query_dropdown.value
        wrong = set(wrong_queries(self.results[self.student], self.database_run.value, self.query_run.value).tolist()) \
            if self.query_run.value is not None else set()
        self._busy = True
        try:
            self.query_dropdown.options = [(f"{q}{' ✗' if q in wrong else ''}", int(q)) for q in queries.tolist()]
            self.query_slider.max = max(len(queries) - 1, 0)
            self.query_slider.disabled = len(queries) <= 1
            if len(queries):
                position = int(np.flatnonzero(queries == previous)[0]) if previous in set(queries.tolist()) else 0
                self.query_slider.value = position
                self.query_dropdown.value = int(queries[position])
            else:
                self.query_slider.value = 0
        finally:
            self._busy = False
        self._render()

    def _on_slider(self, change: Any) -> None:
        if self._busy:
            return
        queries = self.available_queries()
        if not len(queries):
            return
        self._busy = True
        try:
            self.query_dropdown.value = int(queries[min(int(change["new"]), len(queries) - 1)])
        finally:
            self._busy = False
        self._render()

    def _on_dropdown(self, change: Any) -> None:
        if self._busy or change["new"] is None:
            return
        queries = self.available_queries()
        self._busy = True
        try:
            self.query_slider.value = int(np.flatnonzero(queries == int(change["new"]))[0])
        finally:
            self._busy = False
        self._render()

    def _on_render(self, change: Any) -> None:
        if not self._busy:
            self._render()

    # ------------------------------------------------------------------ drawing
    def _render(self) -> None:
        i, j, q = self.database_run.value, self.query_run.value, self.query_dropdown.value
        if j is None or q is None:
            self.views = []
            what = "only wrong queries: none for this pair" if self.wrong_only.value else "no evaluated query for this pair"
            self.status.value = f"<span style='color:{MISS_COLOUR}'>{what}</span>"
            self.query_image.value = self._placeholder_png(what)
            self.retrieval_image.value = self._placeholder_png(what)
            self.map_image.value = self._placeholder_png(what)
            return
        models = self.labels if self.compare.value else [self.model.value]
        fig, map_fig, views = render_query(self.benchmark, self.results, i, j, q, self.split, self.top_k, models,
                                           self.images)
        self.views = views
        self.query_image.value = self.images.png(views[0].query_rel)
        self.retrieval_image.value = figure_png(fig, self.figure_dpi)
        self.map_image.value = figure_png(map_fig, self.figure_dpi)
        parts = []
        for v in views:
            colour = MATCH_COLOUR if v.correct_at_1 else MISS_COLOUR
            rank = f"first match at #{v.first_match_rank}" if v.first_match_rank else f"no match in top-{len(v.matches)}"
            parts.append(f"<span style='color:{colour}'><b>{v.label}</b>: {'correct' if v.correct_at_1 else 'wrong'} "
                         f"at top-1, {rank}</span>")
        n = len(self.query_dropdown.options)
        self.status.value = (f"query <b>{q}</b> ({views[0].query_rel}) — {self.query_slider.value + 1} of {n} "
                             f"{'wrong ' if self.wrong_only.value else ''}queries; {len(views[0].true_neighbours)} true "
                             f"neighbours in the database<br>" + " &nbsp; ".join(parts))
        self.renders += 1

    def _placeholder_png(self, text: str) -> bytes:
        fig = new_figure(3, 1)
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8)
        return figure_png(fig, self.figure_dpi)

    # ------------------------------------------------------------------ API
    def select(self, database_run: int | None = None, query_run: int | None = None, query_index: int | None = None,
               model: str | None = None, compare: bool | None = None, wrong_only: bool | None = None) -> dict[str, Any]:
        """Set controls from code (as a user would) and return :attr:`state`.

        Raises:
            ValueError: a query index that is not selectable under the current pair and filter.
        """
        if database_run is not None:
            self.database_run.value = int(database_run)
        if query_run is not None:
            self.query_run.value = int(query_run)
        if wrong_only is not None:
            self.wrong_only.value = bool(wrong_only)
        if model is not None:
            if model not in self.labels:
                raise KeyError(f"unknown model {model!r}; known: {self.labels}")
            self.model.value = model
        if compare is not None:
            self.compare.value = bool(compare)
        if query_index is not None:
            queries = self.available_queries().tolist()
            if int(query_index) not in queries:
                raise ValueError(f"query {query_index} is not selectable for this pair/filter; selectable: {queries[:30]}")
            self.query_dropdown.value = int(query_index)
        return self.state

    @property
    def state(self) -> dict[str, Any]:
        """What is selected and shown: runs, query, model(s), filter, and per model the top-1 outcome."""
        return {
            "database_run": self.database_run.value,
            "query_run": self.query_run.value,
            "query_index": self.query_dropdown.value,
            "query_position": self.query_slider.value,
            "n_queries": len(self.query_dropdown.options),
            "model": self.model.value,
            "compare": bool(self.compare.value),
            "wrong_only": bool(self.wrong_only.value),
            "student": self.student,
            "query_rel": self.views[0].query_rel if self.views else None,
            "shown_models": [v.label for v in self.views],
            "correct_at_1": {v.label: v.correct_at_1 for v in self.views},
            "renders": self.renders,
        }

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        from IPython.display import display

        display(self.widget)
