"""Training and ablation figures (notebooks 02-04): pure functions returning matplotlib Figures.

* :func:`plot_training_curves` (``training_curves``) — loss terms and validation recall over epochs from a
  metrics file; :func:`metrics_history` its table.
* :func:`embedding_projection` — 2-D PCA of embeddings coloured by place (position along the route).
* :func:`plot_ablation_bars` / :func:`ablation_bars` — bar plots with error bars (mean ± sd over seeds);
  :func:`curvature_plot` — a curvature sweep.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from distilvpr_lib.viz._common import new_figure


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
    ``validation/AR@1`` per epoch. A dotted line marks ``best_epoch`` (the validation-selected epoch) when the
    metrics dict has one, and each recall is circled at that epoch (without one: at its own best). Epoch axes
    have integer ticks; a one-epoch run is drawn as points.
    """
    from matplotlib.ticker import MaxNLocator

    frame = metrics if isinstance(metrics, pd.DataFrame) else metrics_history(metrics)
    best_epoch = metrics.get("best_epoch") if isinstance(metrics, Mapping) else None
    if x is None:
        x = next((c for c in ("epoch", "step", "iteration") if c in frame.columns), None)
    xs = frame[x].to_numpy() if x is not None else np.arange(len(frame))
    loss_cols = [c for c in frame.columns if c != x and _is_loss(c) and frame[c].notna().any()]
    recall_cols = [c for c in frame.columns if c != x and _is_recall(c) and frame[c].notna().any()]
    fig = new_figure(12, 4.2)
    ax_loss, ax_rec = fig.subplots(1, 2)
    markersize = 3 if len(xs) > 1 else 7  # one epoch: a point, not an empty curve
    for c in loss_cols:
        mask = frame[c].notna().to_numpy()
        ax_loss.plot(xs[mask], frame[c].to_numpy()[mask], marker="o", markersize=markersize, label=c)
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
        ax_rec.plot(xs[mask], values, marker="o", markersize=markersize, label=c)
        selected = np.flatnonzero(xs[mask] == best_epoch) if best_epoch is not None and x == "epoch" else []
        if len(values):
            best = int(selected[0]) if len(selected) else int(np.nanargmax(values))
            ax_rec.scatter([xs[mask][best]], [values[best]], s=80, facecolors="none", edgecolors="k", zorder=5)
    if recall_cols:
        ax_rec.legend(fontsize=7)
        ax_rec.set_ylabel("recall [%]")
    else:
        ax_rec.text(0.5, 0.5, "no recall columns", ha="center", va="center", transform=ax_rec.transAxes)
    ax_rec.set_xlabel(x or "record")
    selected_epoch = best_epoch is not None and x == "epoch"
    ax_rec.set_title("validation recall (selected epoch circled)" if selected_epoch else
                     "validation recall (best circled)")
    if x == "epoch":
        for ax in (ax_loss, ax_rec):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
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
            (metric, mean|std|count) column MultiIndex of :func:`distilvpr_lib.analysis.report.curvature_sweep`
            (indexed by curvature).
        x: the curvature column (default the first column whose name contains ``curvature``).
        y: metric column(s) (default every ``AR@`` column).
    """
    frame = sweep.copy()
    if isinstance(frame.columns, pd.MultiIndex):  # e.g. analysis.report.curvature_sweep: (metric, mean|std|count)
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


__all__ = ["BATCH_METRICS", "ablation_bars", "curvature_plot", "embedding_projection", "metrics_history",
           "plot_ablation_bars", "plot_training_curves", "training_curves"]
