"""Figures of the distillation study: forest plot of paired differences, recall and diagnostics per epoch.

Drawing only: every function receives tables built by :mod:`distilvpr_lib.analysis.report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure
    import pandas as pd


def forest_plot(paired: "pd.DataFrame", metric: str = "AR@1", baseline: str = "nokd",
                confidence: float = 0.95) -> "matplotlib.figure.Figure":
    """Δ to the baseline per variation with its bootstrap interval (one row each, zero line dashed).

    Args:
        paired: :func:`~distilvpr_lib.analysis.report.paired_statistics` output (``delta``, ``ci_low``,
            ``ci_high``, ``n_pairs``, ``p_t``).
    """
    import matplotlib.pyplot as plt

    rows = paired.sort_values("delta")
    fig, ax = plt.subplots(figsize=(7.0, 0.45 * max(len(rows), 2) + 1.2))
    y = range(len(rows))
    ax.errorbar(rows["delta"], list(y), xerr=[rows["delta"] - rows["ci_low"], rows["ci_high"] - rows["delta"]],
                fmt="o", color="k", ecolor="0.4", capsize=3)
    ax.axvline(0.0, ls="--", color="tab:red", lw=1)
    ax.set_yticks(list(y))
    ax.set_yticklabels([f"{name} (n={int(r.n_pairs)})" for name, r in rows.iterrows()])
    ax.set_xlabel(f"Δ test {metric} vs {baseline} (paired by seed), {int(round(100 * confidence))}% bootstrap CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def epoch_curves(epochs: "pd.DataFrame", columns: Sequence[str] = ("val_AR@1", "student_norm_mean"),
                 variations: Sequence[str] | None = None) -> "matplotlib.figure.Figure":
    """Mean over seeds (band: min-max) of per-epoch quantities, one panel per column, one line per variation.

    Args:
        epochs: :func:`~distilvpr_lib.analysis.report.epoch_table` output.
        columns: what to draw (e.g. ``val_AR@1``, ``student_norm_mean``, ``grad_ratio/rkdg_distance``).
        variations: which variations (default all).
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in columns if c in epochs]
    fig, axes = plt.subplots(1, max(len(columns), 1), figsize=(4.6 * max(len(columns), 1), 3.4), squeeze=False)
    names = list(variations) if variations is not None else sorted(epochs["variation"].unique())
    for ax, col in zip(axes[0], columns):
        for name in names:
            sel = epochs[(epochs["variation"] == name)].dropna(subset=[col])
            if sel.empty:
                continue
            g = sel.groupby("epoch")[col]
            mean = g.mean()
            ax.plot(mean.index, mean.to_numpy(), marker="o", markersize=3 if len(mean) > 1 else 7,
                    label=f"{name} ({sel['seed'].nunique()} seeds)")
            ax.fill_between(mean.index, g.min().to_numpy(), g.max().to_numpy(), alpha=0.15)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(col)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
