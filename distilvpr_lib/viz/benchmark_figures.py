"""Figures of the benchmark report (notebook 06): a forest plot of the paired comparisons per world and the
validation curves per row.

Drawing only: the tables come from :mod:`distilvpr_lib.analysis.benchmark_records` (comparisons) and
:func:`distilvpr_lib.analysis.benchmark_records.validation_history_table` (curves).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import matplotlib.figure
    import pandas as pd


def forest_plot(comparisons: "pd.DataFrame", world: str, family: str = "A") -> "matplotlib.figure.Figure":
    """Δ test AR@1 of each comparison of one world and family with its 95 % paired t interval (zero dashed).

    Args:
        comparisons: :func:`~distilvpr_lib.analysis.benchmark_records.comparison_table` output.
        world: which world.
        family: ``"A"`` (each row − no-KD), ``"B"`` (DistilVPR tuned − each baseline) or ``"C"`` (a spec's extra
            rows − no-KD, DistilVPR tuned and each baseline; Holm over family C apart).
    """
    from distilvpr_lib.viz._common import new_figure

    rows = comparisons[(comparisons["world"] == world) & (comparisons["family"] == family)]
    rows = rows[rows["n"] > 0].iloc[::-1]
    fig = new_figure(7.5, 0.45 * max(len(rows), 2) + 1.4)
    ax = fig.add_subplot(1, 1, 1)
    y = list(range(len(rows)))
    low = (rows["delta"] - rows["t_low"]).fillna(0.0).clip(lower=0.0)
    high = (rows["t_high"] - rows["delta"]).fillna(0.0).clip(lower=0.0)
    colours = ["tab:green" if v == "beats" else "tab:red" if v == "is beaten by" else "0.3" for v in rows["verdict"]]
    for yi, (_, r), lo, hi, colour in zip(y, rows.iterrows(), low, high, colours):
        ax.errorbar([r["delta"]], [yi], xerr=[[lo], [hi]], fmt="o", color=colour, ecolor=colour, capsize=3)
    ax.axvline(0.0, ls="--", color="0.5", lw=1)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['first']} − {r['second']} (n={int(r['n'])}, p_Holm={r['p_holm']:.3g})"
                        for _, r in rows.iterrows()])
    what = {"A": "each row − no-KD", "B": "DistilVPR tuned − each baseline"}.get(family, "your rows − the others")
    ax.set_xlabel("Δ test AR@1 (points), paired by seed; 95 % t interval")
    ax.set_title(f"{world}: {what} (green: beats, red: is beaten by, Holm over the family)")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def validation_curves(history: "pd.DataFrame", world: str) -> "matplotlib.figure.Figure":
    """Validation AR@1 per epoch for each row of one world: mean over seeds, band min–max.

    Args:
        history: :func:`~distilvpr_lib.analysis.benchmark_records.validation_history_table` output (``world, row,
            seed, epoch, val_ar1``).
    """
    from distilvpr_lib.viz._common import new_figure

    part = history[history["world"] == world].dropna(subset=["val_ar1"])
    fig = new_figure(7.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for row in dict.fromkeys(part["row"]):
        sel = part[part["row"] == row]
        g = sel.groupby("epoch")["val_ar1"]
        mean = g.mean()
        ax.plot(mean.index, mean.to_numpy(), label=f"{row} ({sel['seed'].nunique()} seeds)")
        ax.fill_between(mean.index, g.min().to_numpy(), g.max().to_numpy(), alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AR@1 (%)")
    ax.set_title(f"{world}: validation AR@1 per epoch (mean over seeds; band: min–max)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


__all__ = ["forest_plot", "validation_curves"]
