"""Retrieval pictures (notebook 05): pure functions that draw what they are given (headless-safe; they
return new Figures).

* :func:`draw_retrieval` — a query image beside its top-k retrieved database images, each framed
  green (a true match: within 25 m of the query) or red, with its rank and distance.
* :func:`draw_retrieval_comparison` — the same, one row per model (teacher / no-KD / DistilVPR).
* :func:`draw_retrieval_map` — both runs on the map, the query, its true neighbours (with the 25 m
  circle) and the retrieved places of one or several models.
* :func:`render_query` / :func:`render_queries` — the above for queries of a benchmark and one or
  several :class:`~distilvpr_lib.engine.evaluation.results.RetrievalResults`, to Figures / PNG files.
* :class:`ImageSource` — the sub-map images the pictures show (camera image, or a bird's-eye view).

The results come from :mod:`distilvpr_lib.analysis.run_results` (files, model folders), the queries and
their views from :mod:`distilvpr_lib.analysis.retrieval_queries`; the interactive browser is
:mod:`.browser`.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from distilvpr_lib.config import TRUE_NEIGHBOUR_RADIUS_M
from distilvpr_lib.analysis.retrieval_queries import QueryView, query_view
from distilvpr_lib.viz._common import (
    MATCH_COLOUR,
    MISS_COLOUR,
    frame_axes,
    new_figure,
    save_figure,
    show_image,
)

__all__ = [
    "ImageSource",
    "TRUE_MATCH_RADIUS_M",
    "cloud_thumbnail",
    "draw_retrieval",
    "draw_retrieval_comparison",
    "draw_retrieval_map",
    "render_queries",
    "render_query",
]

#: The radius of a true match (PointNetVLAD evaluation), used for the circle on the map.
TRUE_MATCH_RADIUS_M = TRUE_NEIGHBOUR_RADIUS_M
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
