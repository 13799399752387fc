"""Static figures of the workbook: pure functions returning matplotlib Figures (headless-safe).

Data exploration (notebook 01):

* :func:`plot_run_map` — every run's sub-maps on the UTM map with the training, validation and test
  regions (test squares P1..P4 and validation squares drawn).
* :func:`plot_place_across_runs` — the same place seen in every run (one column per run, titled
  with its condition when known): camera image and bird's-eye view of the cloud.
* :func:`plot_cloud_and_image` — a sub-map cloud in 3D and in bird's-eye view beside its image.
* :func:`plot_split_sizes` — split sizes and the distributions of positives / non-negatives.
* :func:`plot_realism_table` — a realism table (generated vs real statistics) as a figure.
* :func:`plot_real_vs_generated` — real Oxford sub-maps beside generated ones (bird's-eye view).

Training and ablations (notebooks 02–04):

* :func:`plot_training_curves` — loss terms and validation recall over epochs from a metrics file.
* :func:`embedding_projection` — 2-D PCA of embeddings coloured by place (position along the route).
* :func:`plot_ablation_bars` — seaborn bar plot with error bars (mean ± sd over seeds).

Helpers returning tables (used by the figures and by the notebooks' ``metrics.json``):
:func:`benchmark_places`, :func:`split_size_table`, :func:`nearest_submaps`, :func:`load_run_conditions`.

Every function takes plain data or a :class:`~distilvpr_lib.data.benchmark.Benchmark` and returns a
new :class:`matplotlib.figure.Figure` built without pyplot (see :mod:`distilvpr_lib.viz._common`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from distilvpr_lib.viz._common import REGION_COLOURS, new_figure, show_image

__all__ = [
    "benchmark_places",
    "split_size_table",
    "region_squares",
    "nearest_submaps",
    "load_run_conditions",
    "plot_run_map",
    "plot_place_across_runs",
    "plot_cloud_and_image",
    "plot_split_sizes",
    "plot_realism_table",
    "plot_real_vs_generated",
    "default_place",
    "plot_submap",
    "plot_premise",
    "metrics_history",
    "plot_training_curves",
    "plot_ablation_bars",
    "ablation_bars",
    "curvature_plot",
    "embedding_projection",
    "training_curves",
]

#: Run-condition files looked up by :func:`load_run_conditions`, in order (dataset folder first).
CONDITION_FILES: tuple[str, ...] = ("run_conditions.json", "conditions.json", "synth_manifest.json", "manifest.json")


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------
def benchmark_places(benchmark: Any) -> pd.DataFrame:
    """Every sub-map of a benchmark with its run, position and role.

    Returns:
        DataFrame with one row per (sub-map, role), columns ``run, rel_path, northing, easting,
        role`` where ``role`` is ``"training"`` (a training tuple), ``"validation query"``,
        ``"validation database"``, ``"test query"`` or ``"test database"``. A sub-map appears once
        per role it plays (a test query is also in the test database).
    """
    from distilvpr_lib.data.formats import run_from_path

    rows: list[tuple[str, str, float, float, str]] = []
    for t in benchmark.training_tuples.values():
        pos = np.asarray(t.position, dtype=np.float64).reshape(-1)
        rows.append((run_from_path(t.rel_scan_filepath), t.rel_scan_filepath, float(pos[0]), float(pos[1]), "training"))
    for split in ("validation", "test"):
        if not benchmark.has_split(split):
            continue
        for kind, sets in (("database", benchmark.database_sets(split)), ("query", benchmark.query_sets(split))):
            for run_set in sets:
                for entry in run_set.values():
                    rel = entry["query"]
                    rows.append((run_from_path(rel), rel, float(entry["northing"]), float(entry["easting"]),
                                 f"{split} {kind}"))
    return pd.DataFrame(rows, columns=["run", "rel_path", "northing", "easting", "role"])


def split_size_table(benchmark: Any) -> pd.DataFrame:
    """Sizes of every split per run.

    Returns:
        DataFrame indexed by run name with columns ``training, validation database, validation
        query, test database, test query`` (counts of sub-maps; 0 where a run plays no part), plus a
        ``total`` row.
    """
    places = benchmark_places(benchmark)
    columns = ["training", "validation database", "validation query", "test database", "test query"]
    table = places.pivot_table(index="run", columns="role", values="rel_path", aggfunc="count", fill_value=0)
    table = table.reindex(columns=columns, fill_value=0).astype(int)
    table.columns.name = None
    table.loc["total"] = table.sum(axis=0)
    return table


def region_squares(benchmark: Any) -> dict[str, list[tuple[float, float, float]]]:
    """The test and validation squares ``(northing, easting, half_width)`` of a benchmark.

    Test squares come from ``validation_squares.json`` (written by ``data.splits``) when present,
    else the four PointNetVLAD squares P1..P4; validation squares from the benchmark.
    """
    from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, OXFORD_TEST_SQUARE_HALF_WIDTH_M
    from distilvpr_lib.data.splits import VALIDATION_SQUARES_JSON

    tests: list[tuple[float, float, float]] = [(float(n), float(e), float(OXFORD_TEST_SQUARE_HALF_WIDTH_M))
                                               for n, e in OXFORD_TEST_SQUARE_CENTRES]
    path = Path(benchmark.dataset_dir) / VALIDATION_SQUARES_JSON
    if path.is_file():
        try:
            info = json.loads(path.read_text())
            if info.get("test_squares"):
                tests = [tuple(float(v) for v in s) for s in info["test_squares"]]  # type: ignore[misc]
        except (ValueError, TypeError):
            pass  # Benchmark.load already validated the file's validation squares; keep the defaults
    return {"test": tests, "validation": [tuple(map(float, s)) for s in benchmark.validation_squares]}  # type: ignore[misc]


def nearest_submaps(benchmark: Any, northing: float, easting: float, split: str = "test",
                    runs: Sequence[str] | None = None) -> pd.DataFrame:
    """For each run of a split's database sets, the sub-map nearest to a position.

    Args:
        northing, easting: the place (UTM metres).
        split: ``"test"`` or ``"validation"``.
        runs: keep only these run names (default all, in database-set order).

    Returns:
        DataFrame with columns ``run, set_index, index, rel_path, northing, easting, distance_m``
        (one row per run; ``set_index`` = database set index, ``index`` = row in that set).
    """
    rows = []
    names = benchmark.set_run_names(split)
    for set_index, run_set in enumerate(benchmark.database_sets(split)):
        if not run_set or (runs is not None and names[set_index] not in runs):
            continue
        keys = list(run_set.keys())
        pos = np.array([[run_set[k]["northing"], run_set[k]["easting"]] for k in keys], dtype=np.float64)
        dist = np.hypot(pos[:, 0] - northing, pos[:, 1] - easting)
        best = int(np.argmin(dist))
        entry = run_set[keys[best]]
        rows.append((names[set_index], set_index, int(keys[best]), entry["query"], float(entry["northing"]),
                     float(entry["easting"]), float(dist[best])))
    return pd.DataFrame(rows, columns=["run", "set_index", "index", "rel_path", "northing", "easting", "distance_m"])


def load_run_conditions(dataset_dir: str | Path) -> dict[str, str]:
    """Per-run condition names (``{"2014-05-19-13-20-57": "overcast", ...}``) if the dataset has them.

    Looks for ``run_conditions.json`` / ``conditions.json`` / ``synth_manifest.json`` /
    ``manifest.json`` in ``dataset_dir`` and accepts either ``{run: name}``, ``{run: {"name"|
    "condition"|"label": ...}}`` or a dict with a ``"runs"`` or ``"conditions"`` entry of either
    shape (or a list of records with ``run``/``name`` keys). Real benchmarks have none: ``{}``.
    """
    folder = Path(dataset_dir)
    for name in CONDITION_FILES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text())
        except ValueError:
            continue
        conditions = _parse_conditions(info)
        if conditions:
            return conditions
    return {}


def _condition_label(value: Any) -> str | None:
    """A short condition name from a string or a record (``condition``/``label``, else
    ``archetype`` [+ ``season``], else ``preset``/``kind``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("condition", "label"):
            if isinstance(value.get(key), str):
                return value[key]
        if isinstance(value.get("archetype"), str):
            season = value.get("season")
            return value["archetype"] + (f", {season}" if isinstance(season, str) else "")
        for key in ("preset", "kind"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def _parse_conditions(info: Any) -> dict[str, str]:
    if isinstance(info, Mapping):
        for key in ("runs", "conditions", "run_conditions"):
            if key in info:
                parsed = _parse_conditions(info[key])
                if parsed:
                    return parsed
        out = {str(k): lab for k, v in info.items() if (lab := _condition_label(v)) is not None}
        return out if out and all(_looks_like_run(k) for k in out) else {}
    if isinstance(info, list):
        out = {}
        for record in info:
            if not isinstance(record, Mapping):
                continue
            run = record.get("run", record.get("run_name", record.get("name")))
            label = _condition_label({k: v for k, v in record.items() if k not in ("run", "run_name", "name")})
            if isinstance(run, str) and label is not None:
                out[run] = label
        return out
    return {}


def _looks_like_run(name: str) -> bool:
    return any(ch.isdigit() for ch in name)


# ---------------------------------------------------------------------------
# Maps
# ---------------------------------------------------------------------------
def _draw_squares(ax: Any, squares: Sequence[tuple[float, float, float]], colour: str, label: str,
                  names: Sequence[str] | None = None) -> None:
    for n, (north, east, half) in enumerate(squares):
        ax.add_patch(Rectangle((east - half, north - half), 2 * half, 2 * half, fill=False, edgecolor=colour,
                               linestyle="--", linewidth=1.5, label=label if n == 0 else None, zorder=3))
        if names is not None and n < len(names):
            ax.text(east - half + 8, north + half - 8, names[n], color=colour, fontsize=9, va="top", ha="left",
                    fontweight="bold", zorder=4, clip_on=True)


def _limits(north: np.ndarray, east: np.ndarray, margin: float = 60.0) -> tuple[tuple[float, float], tuple[float, float]]:
    """(x = easting, y = northing) limits around the data; the shorter side is widened to at least
    half the longer so that equal-aspect maps of a straight route are not a sliver."""
    if len(north) == 0:
        return (0.0, 1.0), (0.0, 1.0)
    span = max(float(np.ptp(east)), float(np.ptp(north))) + 2 * margin
    out = []
    for values in (east, north):
        centre = (float(values.min()) + float(values.max())) / 2
        half = max(float(np.ptp(values)) / 2 + margin, span * 0.3)
        out.append((centre - half, centre + half))
    return out[0], out[1]


def plot_run_map(benchmark: Any, runs: Sequence[str] | None = None, title: str | None = None) -> Figure:
    """Map of all runs with the training / validation / test regions.

    Left: every sub-map coloured by run. Right: coloured by role — training tuples, validation
    queries, test queries, and the remaining evaluation database sub-maps (grey: guard band or
    outside any query region). Both panels draw the test squares P1..P4 (red, dashed) and the
    validation squares (orange, dashed). Axes are easting (x) and northing (y) in metres.

    Args:
        benchmark: a loaded Benchmark.
        runs: run names to show (default all).
    """
    places = benchmark_places(benchmark)
    if runs is not None:
        places = places[places["run"].isin(list(runs))]
    squares = region_squares(benchmark)
    fig = new_figure(13, 6)
    ax_runs, ax_roles = fig.subplots(1, 2, sharex=True, sharey=True)
    run_names = sorted(places["run"].unique())
    cmap = _colour_cycle(len(run_names))
    for k, run in enumerate(run_names):
        sub = places[places["run"] == run].drop_duplicates("rel_path")
        ax_runs.scatter(sub["easting"], sub["northing"], s=6, color=cmap[k], label=run, alpha=0.8)
    if len(run_names) > 12:
        ax_runs.legend_ = None
    else:
        ax_runs.legend(fontsize=7, loc="best", markerscale=2, title="run", title_fontsize=8)
    ax_runs.set_title("sub-maps by run")

    unused = places[places["role"].isin(["validation database", "test database"])]
    used = set(places.loc[places["role"].isin(["training", "validation query", "test query"]), "rel_path"])
    unused = unused[~unused["rel_path"].isin(used)].drop_duplicates("rel_path")
    ax_roles.scatter(unused["easting"], unused["northing"], s=5, color=REGION_COLOURS["guard / unused"],
                     label=f"database only ({len(unused)})", alpha=0.6)
    for role, colour in (("training", REGION_COLOURS["training"]), ("validation query", REGION_COLOURS["validation"]),
                         ("test query", REGION_COLOURS["test"])):
        sub = places[places["role"] == role]
        ax_roles.scatter(sub["easting"], sub["northing"], s=7, color=colour, label=f"{role} ({len(sub)})", alpha=0.85)
    ax_roles.set_title("sub-maps by role")
    for ax in (ax_runs, ax_roles):
        _draw_squares(ax, squares["test"], REGION_COLOURS["test"], "test squares",
                      names=[f"P{i + 1}" for i in range(len(squares["test"]))])
        _draw_squares(ax, squares["validation"], REGION_COLOURS["validation"], "validation squares")
        ax.set_xlabel("easting [m]")
        ax.set_aspect("equal", adjustable="box")
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(axis="x", labelrotation=30)
    ax_runs.set_ylabel("northing [m]")
    xlim, ylim = _limits(places["northing"].to_numpy(), places["easting"].to_numpy())
    ax_runs.set_xlim(*xlim)
    ax_runs.set_ylim(*ylim)
    handles, labels = ax_roles.get_legend_handles_labels()
    ax_roles.legend(handles, labels, fontsize=7, loc="best", markerscale=2)
    fig.suptitle(title or f"{Path(benchmark.dataset_dir).name}: {len(run_names)} runs")
    fig.tight_layout()
    return fig


def _colour_cycle(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i % cmap.N) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


# ---------------------------------------------------------------------------
# Clouds and images
# ---------------------------------------------------------------------------
def _bev(ax: Any, cloud: np.ndarray, title: str | None = None, size: float = 1.0, limit: float | None = 1.0) -> None:
    cloud = np.asarray(cloud)
    order = np.argsort(cloud[:, 2])
    ax.scatter(cloud[order, 0], cloud[order, 1], c=cloud[order, 2], s=size, cmap="viridis", linewidths=0)
    if limit is not None:
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def plot_cloud_and_image(cloud: np.ndarray, image: Any = None, title: str | None = None, max_points: int = 4096,
                         limit: float | None = 1.0) -> Figure:
    """A sub-map in 3D and in bird's-eye view, next to the camera image of the same place.

    Args:
        cloud: (P, 3) points (normalised sub-map: within [-1, 1]).
        image: PIL image / (H, W, 3) array / None (placeholder).
        title: figure title (e.g. the sub-map's path).
        max_points: subsample the 3D scatter to at most this many points (evenly, deterministic).
        limit: axis half-range (None = automatic, e.g. for metric Boreas clouds).
    """
    cloud = np.asarray(cloud, dtype=np.float64).reshape(-1, 3)
    step = max(1, int(np.ceil(len(cloud) / max_points)))
    shown = cloud[::step]
    fig = new_figure(13, 4.2)
    ax3d = fig.add_subplot(1, 3, 1, projection="3d")
    ax3d.scatter(shown[:, 0], shown[:, 1], shown[:, 2], c=shown[:, 2], s=0.6, cmap="viridis", linewidths=0)
    if limit is not None:
        ax3d.set_xlim(-limit, limit)
        ax3d.set_ylim(-limit, limit)
        ax3d.set_zlim(-limit, limit)
    ax3d.set_title(f"3D ({len(cloud)} points)", fontsize=9)
    ax3d.view_init(elev=30, azim=-60)
    ax3d.tick_params(labelsize=6)
    ax_bev = fig.add_subplot(1, 3, 2)
    _bev(ax_bev, cloud, "bird's-eye view (colour = z)", size=1.5, limit=limit)
    ax_img = fig.add_subplot(1, 3, 3)
    show_image(ax_img, image)
    ax_img.set_title("camera image", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_place_across_runs(benchmark: Any, northing: float, easting: float, split: str = "test",
                           runs: Sequence[str] | None = None, conditions: Mapping[str, str] | None = None,
                           show_clouds: bool = True, max_runs: int = 12) -> Figure:
    """The same place seen in every run: one column per run with its nearest sub-map.

    Row 1: the camera image (nearest image of the nearest sub-map); row 2 (``show_clouds``): the
    cloud in bird's-eye view. Column titles: run name, condition (when ``conditions`` names it) and
    the distance between the sub-map and the place.

    Args:
        benchmark: a loaded Benchmark.
        northing, easting: the place.
        split: database sets to search (``"test"`` or ``"validation"``).
        runs: run names (default all runs of the split, at most ``max_runs``).
        conditions: ``{run: condition name}``; default :func:`load_run_conditions` of the dataset.
    """
    if conditions is None:
        conditions = load_run_conditions(benchmark.dataset_dir)
    nearest = nearest_submaps(benchmark, northing, easting, split, runs).head(max_runs)
    n = max(len(nearest), 1)
    rows = 2 if show_clouds else 1
    fig = new_figure(max(2.3 * n, 4), 2.4 * rows + 0.6)
    axes = np.atleast_2d(fig.subplots(rows, n, squeeze=False))
    for col, rec in enumerate(nearest.itertuples(index=False)):
        image = benchmark.read_image(rec.rel_path) if benchmark.has_images else None
        show_image(axes[0, col], image)
        label = rec.run
        if conditions.get(rec.run):
            label += f"\n{conditions[rec.run]}"
        axes[0, col].set_title(f"{label}\n{rec.distance_m:.1f} m away", fontsize=7)
        if show_clouds:
            _bev(axes[1, col], benchmark.read_cloud(rec.rel_path), None, size=0.8)
    if len(nearest) == 0:
        axes[0, 0].text(0.5, 0.5, "no sub-maps", ha="center", va="center")
    if show_clouds:
        axes[1, 0].set_ylabel("cloud (BEV)", fontsize=8)
    axes[0, 0].set_ylabel("image", fontsize=8)
    fig.suptitle(f"the same place across runs (N {northing:.0f}, E {easting:.0f})", fontsize=10)
    fig.tight_layout()
    return fig


def default_place(benchmark: Any, split: str = "test") -> tuple[float, float]:
    """A place to show across runs: the middle query of the first non-empty query set of ``split``
    (falling back to the middle training sub-map). Returns ``(northing, easting)``."""
    if benchmark.has_split(split):
        for run_set in benchmark.query_sets(split):
            if run_set:
                entry = run_set[sorted(run_set)[len(run_set) // 2]]
                return float(entry["northing"]), float(entry["easting"])
    tuples = list(benchmark.training_tuples.values())
    if not tuples:
        raise ValueError(f"{benchmark.dataset_dir}: no query and no training sub-map to pick a place from")
    pos = np.asarray(tuples[len(tuples) // 2].position, dtype=np.float64).reshape(-1)
    return float(pos[0]), float(pos[1])


def plot_submap(benchmark: Any, rel: str, title: str | None = None) -> Figure:
    """:func:`plot_cloud_and_image` of one sub-map of a benchmark (its nearest image when there is one)."""
    image = benchmark.read_image(rel) if benchmark.has_images and benchmark.image_count(rel) else None
    return plot_cloud_and_image(benchmark.read_cloud(rel), image, title or rel)


def plot_premise(table: pd.DataFrame, title: str | None = None) -> Figure:
    """Same-place vs different-place separability (ROC AUC) of images and clouds per run.

    Args:
        table: :func:`distilvpr_lib.data.synth.stats.premise_table` output — one row per run with
            ``run``, ``image_auc``, ``cloud_auc`` and optionally ``archetype``, ``season``.
    Left: grouped bars of image vs cloud AUC per run (labelled with its condition). Right: the
    same-place similarities of images against the different-place ones.
    """
    for col in ("run", "image_auc", "cloud_auc"):
        if col not in table.columns:
            raise KeyError(f"plot_premise: column {col!r} missing; columns: {list(table.columns)}")
    labels = []
    for rec in table.itertuples(index=False):
        cond = ", ".join(str(getattr(rec, c)) for c in ("archetype", "season") if getattr(rec, c, ""))
        labels.append(f"{rec.run}\n{cond}" if cond else str(rec.run))
    x = np.arange(len(table))
    fig = new_figure(max(7.0, 1.3 * len(table) + 3), 4.4)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x - 0.2, table["image_auc"], width=0.4, label="image (thumbnail NCC)", color="#ff7f0e")
    ax.bar(x + 0.2, table["cloud_auc"], width=0.4, label="cloud (chamfer)", color="#1f77b4")
    ax.axhline(0.5, color="k", linestyle=":", linewidth=1, label="chance")
    for xi, (img, cl) in enumerate(zip(table["image_auc"], table["cloud_auc"])):
        if not (np.isfinite(img) and np.isfinite(cl)):
            ax.text(xi, 0.05, "no same-place\npairs", ha="center", va="bottom", fontsize=7, color="#555555")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylim(0.0, 1.05)
    ax.set_ylabel("ROC AUC: same place vs different place")
    ref = table.attrs.get("reference_run")
    ax.set_title(title or f"premise: across runs, appearance changes more than geometry"
                 + (f" (reference run {ref})" if ref else ""), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_real_vs_generated(real_clouds: Sequence[np.ndarray], generated_clouds: Sequence[np.ndarray],
                           real_titles: Sequence[str] | None = None, generated_titles: Sequence[str] | None = None,
                           n: int = 4) -> Figure:
    """Real Oxford sub-maps (top row) beside generated ones (bottom row), in bird's-eye view.

    Args:
        real_clouds, generated_clouds: lists of (P, 3) normalised clouds; the first ``n`` of each are drawn.
        real_titles, generated_titles: optional titles per cloud.
    """
    real, generated = list(real_clouds)[:n], list(generated_clouds)[:n]
    cols = max(len(real), len(generated), 1)
    fig = new_figure(2.6 * cols, 5.6)
    axes = fig.subplots(2, cols, squeeze=False)
    for row, (clouds, titles, name) in enumerate(((real, real_titles, "real Oxford"),
                                                  (generated, generated_titles, "generated"))):
        for col in range(cols):
            ax = axes[row, col]
            if col < len(clouds):
                t = titles[col] if titles is not None and col < len(titles) else None
                _bev(ax, clouds[col], t, size=0.8)
            else:
                ax.axis("off")
        axes[row, 0].set_ylabel(name, fontsize=9)
    fig.suptitle("real Oxford sub-maps (top) beside generated ones (bottom): bird's-eye view, colour = z", fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Split sizes, distributions
# ---------------------------------------------------------------------------
def plot_split_sizes(benchmark: Any) -> Figure:
    """Split sizes (bar chart, per run stacked) and the number of positives / non-negatives per
    training tuple (histograms)."""
    table = split_size_table(benchmark).drop(index="total")
    fig = new_figure(14, 4.2)
    ax_bar, ax_pos, ax_nn = fig.subplots(1, 3)
    bottoms = np.zeros(len(table.columns))
    colours = _colour_cycle(len(table.index))
    x = np.arange(len(table.columns))
    for k, (run, row) in enumerate(table.iterrows()):
        values = row.to_numpy(dtype=float)
        ax_bar.bar(x, values, bottom=bottoms, color=colours[k], label=run if len(table) <= 12 else None)
        bottoms += values
    for xi, total in zip(x, bottoms):
        ax_bar.text(xi, total, f"{int(total)}", ha="center", va="bottom", fontsize=8)
    ax_bar.set_xticks(x, [c.replace(" ", "\n") for c in table.columns], fontsize=8)
    ax_bar.set_ylabel("sub-maps")
    ax_bar.set_title("split sizes (stacked by run)")
    if len(table) <= 12:
        ax_bar.legend(fontsize=6)
    tuples = list(benchmark.training_tuples.values())
    n_pos = np.array([len(t.positives) for t in tuples], dtype=int)
    n_nn = np.array([len(t.non_negatives) for t in tuples], dtype=int)
    for ax, values, what, colour in ((ax_pos, n_pos, "positives (≤ 10 m)", REGION_COLOURS["training"]),
                                     (ax_nn, n_nn, "non-negatives (≤ 50 m)", "#8c564b")):
        if len(values):
            bins = np.arange(values.min(), values.max() + 2) - 0.5
            if len(bins) > 60:
                bins = 60
            ax.hist(values, bins=bins, color=colour, alpha=0.85)
            ax.axvline(float(np.median(values)), color="k", linestyle=":", label=f"median {np.median(values):.0f}")
            ax.legend(fontsize=8)
            zero = int((values == 0).sum()) if what.startswith("positives") else None
            extra = f"; {zero} without positives" if zero else ""
            ax.set_title(f"{what} per training tuple{extra}", fontsize=9)
        else:
            ax.text(0.5, 0.5, "no training tuples", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(what, fontsize=9)
        ax.set_xlabel("count")
        ax.set_ylabel("training tuples")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Tables as figures
# ---------------------------------------------------------------------------
def plot_realism_table(table: pd.DataFrame, status_column: str | None = None, title: str | None = None,
                       float_format: str = "{:.4g}") -> Figure:
    """Render a realism table (one row per statistic) as a figure.

    Args:
        table: a DataFrame (index = statistic); numeric cells are formatted with ``float_format``.
        status_column: a boolean column saying whether each row meets its goal; rows are tinted
            green (True) or red (False). Default: the first boolean column, or one named like
            ``within*`` / ``ok`` / ``pass*`` if any.
        title: figure title.
    """
    if status_column is None:
        for name in table.columns:
            lowered = str(name).lower()
            if table[name].dtype == bool or lowered.startswith(("within", "pass")) or lowered == "ok":
                status_column = name
                break
    cells = []
    for _, row in table.iterrows():
        cells.append([float_format.format(v) if isinstance(v, (float, np.floating)) and np.isfinite(v)
                      else ("—" if isinstance(v, (float, np.floating)) else str(v)) for v in row.to_numpy()])
    n_rows, n_cols = len(table), len(table.columns)
    fig = new_figure(min(2.0 + 1.6 * n_cols, 18), 0.9 + 0.38 * (n_rows + 1))
    ax = fig.add_subplot(1, 1, 1)
    ax.axis("off")
    colours = None
    if status_column is not None and status_column in table.columns:
        ok = table[status_column].astype(bool).to_numpy()
        colours = [["#e3f5e1" if good else "#fbe3e3"] * n_cols for good in ok]
    tab = ax.table(cellText=cells or [[""] * n_cols], rowLabels=[str(i) for i in table.index] or None,
                   colLabels=[str(c) for c in table.columns], cellColours=colours, loc="center", cellLoc="center")
    tab.auto_set_font_size(False)
    tab.set_fontsize(8)
    tab.scale(1.0, 1.3)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------
_HISTORY_KEYS = ("history", "epochs", "per_epoch", "log", "records", "train_history")


def metrics_history(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str | Path) -> pd.DataFrame:
    """The per-epoch (or per-step) records of a training metrics file as a flat DataFrame.

    Accepts a path to ``metrics.json``, a list of records, or a dict holding the records under one
    of ``history / epochs / per_epoch / log / records / train_history``; nested dicts inside a record
    are flattened with ``/`` (``{"val": {"AR@1": 50}}`` -> column ``val/AR@1``).
    """
    if isinstance(metrics, (str, Path)):
        path = Path(metrics)
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read training metrics ({exc})") from exc
    records: Any = metrics
    if isinstance(metrics, Mapping):
        records = None
        for key in _HISTORY_KEYS:
            if isinstance(metrics.get(key), list):
                records = metrics[key]
                break
        if records is None:
            raise ValueError(f"no per-epoch history in the metrics (looked for keys {list(_HISTORY_KEYS)}; "
                             f"found {sorted(metrics)})")
    rows = [_flatten(r) for r in records if isinstance(r, Mapping)]
    return pd.DataFrame(rows)


def _flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            out[name] = float(value)
        elif value is None:
            out[name] = np.nan
    return out


def _is_loss(name: str) -> bool:
    lowered = name.lower()
    return ("loss" in lowered or lowered.startswith(("term/", "terms/"))) and not _is_recall(name)


def _is_recall(name: str) -> bool:
    lowered = name.lower()
    return any(tag in lowered for tag in ("ar@", "recall")) and "per_run" not in lowered


def plot_training_curves(metrics: Mapping[str, Any] | Sequence[Mapping[str, Any]] | str | Path | pd.DataFrame,
                         x: str | None = None, title: str | None = None) -> Figure:
    """Loss terms over epochs (or steps) and validation recall per epoch.

    Args:
        metrics: a ``metrics.json`` path / dict / record list (see :func:`metrics_history`) or a DataFrame.
        x: the x column (default ``epoch``, else ``step``, else the row number).

    Left panel: every column whose name contains ``loss`` (or starts with ``term/``), log scale when
    all positive — for the engine's records these are ``losses/<term>`` and ``losses/total``.
    Right panel: every recall column (``AR@``/``recall``, per-run columns left out), e.g.
    ``validation/AR@1`` per epoch, with the best value circled. A dotted line marks ``best_epoch``
    (the validation-selected epoch) when the metrics dict has one.
    """
    frame = metrics if isinstance(metrics, pd.DataFrame) else metrics_history(metrics)
    best_epoch = metrics.get("best_epoch") if isinstance(metrics, Mapping) else None
    if x is None:
        x = next((c for c in ("epoch", "step", "iteration") if c in frame.columns), None)
    xs = frame[x].to_numpy() if x is not None else np.arange(len(frame))
    loss_cols = [c for c in frame.columns if c != x and _is_loss(c) and frame[c].notna().any()]
    recall_cols = [c for c in frame.columns if c != x and _is_recall(c) and frame[c].notna().any()]
    fig = new_figure(12, 4.2)
    ax_loss, ax_rec = fig.subplots(1, 2)
    for c in loss_cols:
        mask = frame[c].notna().to_numpy()
        ax_loss.plot(xs[mask], frame[c].to_numpy()[mask], marker="o", markersize=3, label=c)
    if loss_cols:
        values = frame[loss_cols].to_numpy(dtype=float)
        if np.nanmin(values) > 0:
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    else:
        ax_loss.text(0.5, 0.5, "no loss columns", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel(x or "record")
    ax_loss.set_title("loss terms")
    for c in recall_cols:
        mask = frame[c].notna().to_numpy()
        values = frame[c].to_numpy()[mask]
        ax_rec.plot(xs[mask], values, marker="o", markersize=3, label=c)
        if len(values):
            best = int(np.nanargmax(values))
            ax_rec.scatter([xs[mask][best]], [values[best]], s=80, facecolors="none", edgecolors="k", zorder=5)
    if recall_cols:
        ax_rec.legend(fontsize=7)
        ax_rec.set_ylabel("recall [%]")
    else:
        ax_rec.text(0.5, 0.5, "no recall columns", ha="center", va="center", transform=ax_rec.transAxes)
    ax_rec.set_xlabel(x or "record")
    ax_rec.set_title("validation recall (best circled)")
    if best_epoch is not None and x == "epoch":
        for ax in (ax_loss, ax_rec):
            ax.axvline(float(best_epoch), color="#555555", linestyle=":", linewidth=1)
        ax_rec.text(float(best_epoch), ax_rec.get_ylim()[0], " selected epoch", fontsize=7, color="#555555",
                    va="bottom", rotation=90)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Ablations
# ---------------------------------------------------------------------------
def plot_ablation_bars(frame: pd.DataFrame, x: str = "method", y: str | Sequence[str] = "AR@1", hue: str | None = None,
                       order: Sequence[str] | None = None, reference: str | None = None,
                       title: str | None = None, show_points: bool = True) -> Figure:
    """Seaborn bar plot of one or several metrics per configuration, with error bars (mean ± sd over seeds).

    Args:
        frame: one row per run (configuration × seed) with columns ``x``, ``y`` (and ``hue``).
        x, hue: column names; y: a metric column or several (one panel each).
        order: order of the bars (default: by descending mean of the first ``y``).
        reference: an ``x`` value (e.g. ``"nokd"``) whose mean is drawn as a dashed line per panel.
        show_points: overlay the individual seeds.
    """
    import seaborn as sns

    ys = [y] if isinstance(y, str) else list(y)
    for col in [x, *ys] + ([hue] if hue else []):
        if col not in frame.columns:
            raise KeyError(f"plot_ablation_bars: column {col!r} not in the table; columns: {list(frame.columns)}")
    data = frame.copy()
    for col in ys:
        data[col] = pd.to_numeric(data[col], errors="coerce")
    data = data.dropna(subset=[ys[0]])
    if order is None:
        order = list(data.groupby(x)[ys[0]].mean().sort_values(ascending=False).index)
    fig = new_figure(max(6.0, 0.7 * len(order) + 2) * len(ys), 4.8)
    axes = fig.subplots(1, len(ys), squeeze=False)[0]
    for ax, col in zip(axes, ys):
        sub = data.dropna(subset=[col])
        sns.barplot(data=sub, x=x, y=col, hue=hue, order=order, errorbar="sd", capsize=0.15, ax=ax,
                    color=None if hue else "#4c72b0", err_kws={"linewidth": 1.2})
        if show_points:
            sns.stripplot(data=sub, x=x, y=col, hue=hue, order=order, dodge=bool(hue), color="k", size=3, ax=ax,
                          legend=False, alpha=0.7)
        if reference is not None and reference in set(sub[x]):
            ref = float(sub.loc[sub[x] == reference, col].mean())
            ax.axhline(ref, color="#d62728", linestyle="--", linewidth=1, label=f"{reference} mean {ref:.2f}")
            ax.legend(fontsize=8)
        ax.tick_params(axis="x", labelrotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        ax.set_xlabel("")
        ax.set_title(f"{col}: mean ± sd over seeds", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


#: Metric columns of a batch table (:func:`distilvpr_lib.batch.collect_batch`) shown by :func:`ablation_bars`.
BATCH_METRICS: tuple[str, ...] = ("test.AR@1", "test.AR@5", "test.AR@1%")


def ablation_bars(runs: pd.DataFrame, metrics: Sequence[str] = BATCH_METRICS, x: str = "variation",
                  reference: str | None = "nokd", only_ok: bool = True, title: str | None = None) -> Figure:
    """Bar plots (mean ± sd over seeds) of a papermill batch of notebook 03.

    Args:
        runs: the table of :func:`distilvpr_lib.batch.collect_batch` (one row per run; columns
            ``variation``, ``status`` and dot-joined metrics such as ``test.AR@1``).
        metrics: metric columns to plot (those absent are skipped).
        x: the grouping column.
        reference: a variation drawn as a dashed line (skipped when absent).
        only_ok: keep only runs whose ``status`` is ``"ok"``.
    """
    data = runs
    if only_ok and "status" in data.columns:
        data = data[data["status"] == "ok"]
    present = [m for m in metrics if m in data.columns]
    if not present:
        raise KeyError(f"ablation_bars: none of the metric columns {list(metrics)} is in the batch table; "
                       f"columns: {list(runs.columns)}")
    return plot_ablation_bars(data, x=x, y=present, reference=reference, title=title)


def curvature_plot(sweep: pd.DataFrame, x: str | None = None, y: str | Sequence[str] | None = None,
                   title: str | None = None) -> Figure:
    """A metric against the curvature c of the hyperbolic terms (log-x), with ± sd.

    Args:
        sweep: either one row per run (a ``curvature`` column and raw metric columns, e.g. ``test.AR@1``;
            the mean ± sd over seeds is drawn) or one row per curvature with ``<metric> mean`` /
            ``<metric> std`` (or ``<metric>_mean`` / ``<metric>_std``) columns, or the
            (metric, mean|std|count) column MultiIndex of :func:`distilvpr_lib.engine.report.curvature_sweep`
            (indexed by curvature).
        x: the curvature column (default the first column whose name contains ``curvature``).
        y: metric column(s) (default every ``AR@`` column).
    """
    frame = sweep.copy()
    if isinstance(frame.columns, pd.MultiIndex):  # e.g. engine.report.curvature_sweep: (metric, mean|std|count)
        frame.columns = [" ".join(str(p) for p in col if str(p) != "") for col in frame.columns]
    if x is None and not any("curvature" in str(c).lower() for c in frame.columns):
        frame = frame.reset_index()
    if x is None:
        x = next((c for c in frame.columns if "curvature" in str(c).lower()), None)
        if x is None:
            raise KeyError(f"curvature_plot: no curvature column in {list(sweep.columns)}")
    frame = frame.copy()
    frame[x] = pd.to_numeric(frame[x], errors="coerce")
    if y is None:
        y = [c for c in frame.columns if "ar@" in str(c).lower() and not str(c).lower().endswith(("std", "sd", "count"))]
    ys = [y] if isinstance(y, str) else list(y)
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    for col in ys:
        base = str(col)
        for suffix in (" mean", "_mean", ".mean"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        std_col = next((c for c in (f"{base} std", f"{base}_std", f"{base}.std", f"{base} sd") if c in frame.columns), None)
        if std_col is not None:
            sub = frame[[x, col, std_col]].dropna(subset=[x, col]).sort_values(x)
            means, stds = pd.to_numeric(sub[col]), pd.to_numeric(sub[std_col]).fillna(0.0)
        else:
            grouped = frame.assign(**{col: pd.to_numeric(frame[col], errors="coerce")}).groupby(x)[col]
            means, stds = grouped.mean(), grouped.std().fillna(0.0)
            sub = pd.DataFrame({x: means.index})
        xs = np.asarray(sub[x], dtype=float)
        ax.errorbar(xs, np.asarray(means, dtype=float), yerr=np.asarray(stds, dtype=float), marker="o", capsize=3,
                    label=base)
    if len(frame) and (frame[x].dropna() > 0).all():
        ax.set_xscale("log")
    ax.set_xlabel(f"{x} (c)")
    ax.set_ylabel("recall [%]")
    ax.legend(fontsize=8)
    ax.set_title(title or "curvature sweep: mean ± sd over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def embedding_projection(embeddings: np.ndarray, positions: np.ndarray, title: str | None = None,
                         normalize: bool = True) -> Figure:
    """2-D PCA projection of embeddings, each point coloured by its place.

    The colour is the point's position along the principal axis of ``positions`` (for a route, the
    along-route coordinate), so sub-maps of the same place in different runs share a colour: a good
    embedding shows a smooth colour gradient, a poor one a mixture.

    Args:
        embeddings: (n, D) embeddings (e.g. the fused head on the test database sets), n >= 2.
        positions: (n, 2) ``(northing, easting)`` of each embedding's sub-map.
        title: axes title (default mentions the explained variance).
        normalize: L2-normalise the rows first (the cosine geometry of the evaluation).

    Returns:
        The Figure (one axes and a colour bar).
    """
    from sklearn.decomposition import PCA

    embeddings = np.asarray(embeddings, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"embedding_projection: embeddings must be (n >= 2, D), got {embeddings.shape}")
    if positions.shape != (embeddings.shape[0], 2):
        raise ValueError(f"embedding_projection: positions must be ({embeddings.shape[0]}, 2), got {positions.shape}")
    if normalize:
        embeddings = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    pca = PCA(n_components=2, random_state=0)
    projected = pca.fit_transform(embeddings)
    centred = positions - positions.mean(axis=0)
    if np.allclose(centred, 0.0):
        place = np.zeros(len(positions))
    else:
        axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        place = centred @ axis
        place = place - place.min()
    fig = new_figure(6.0, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    points = ax.scatter(projected[:, 0], projected[:, 1], c=place, cmap="viridis", s=10, alpha=0.85)
    fig.colorbar(points, ax=ax, label="place: position along the route [m]")
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f} %)")
    ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f} %)")
    ax.set_title(title or f"PCA of {embeddings.shape[0]} embeddings ({embeddings.shape[1]}-d)", fontsize=10)
    fig.tight_layout()
    return fig


#: Short names used by the notebooks.
training_curves = plot_training_curves
