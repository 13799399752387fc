"""Data-exploration figures (notebook 01): pure functions returning matplotlib Figures (headless-safe).

* :func:`plot_run_map` — every run's sub-maps on the UTM map with the training, validation and test
  regions (test squares P1..P4 and validation squares drawn).
* :func:`plot_place_across_runs` — the same place seen in every run (one column per run, titled
  with its condition when known): camera image and bird's-eye view of the cloud.
* :func:`plot_cloud_and_image` — a sub-map cloud in 3D and in bird's-eye view beside its image.
* :func:`plot_split_sizes` — split sizes and the distributions of positives / non-negatives.
* :func:`plot_realism_table` — a realism table (generated vs real statistics) as a figure.
* :func:`plot_real_vs_generated` — real Oxford sub-maps beside generated ones (bird's-eye view).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from distilvpr_lib.viz._common import REGION_COLOURS, new_figure, show_image
from distilvpr_lib.viz.figures.tables import (
    benchmark_places,
    load_run_conditions,
    nearest_submaps,
    region_squares,
    split_size_table,
)


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
        ax_runs.legend(fontsize=9, loc="best", markerscale=3, title="run", title_fontsize=10)
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
    ax_roles.legend(handles, labels, fontsize=9, loc="best", markerscale=3)
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


__all__ = ["plot_cloud_and_image", "plot_place_across_runs", "plot_premise", "plot_real_vs_generated",
           "plot_realism_table", "plot_run_map", "plot_split_sizes", "plot_submap"]
