"""Tables for notebooks 03/04 and the demo report, read from run folders and batch DataFrames.

All numbers come from the ``metrics.json`` files the training runs wrote (test split, the epoch
selected on the validation split); nothing here trains or evaluates.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Metrics shown in the tables (keys of ``metrics["test"]``).
TABLE_METRICS: tuple[str, ...] = ("AR@1", "AR@5", "AR@1%")


def read_metrics(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metrics.json`` of a teacher folder or student run (clear error when missing)."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (has the run finished?)")
    return json.loads(path.read_text())


def comparison_table(runs: Mapping[str, str | os.PathLike]) -> pd.DataFrame:
    """Test results of several runs side by side: AR@1, AR@5, AR@10, AR@1% and per-run AR@1.

    Args:
        runs: label -> run folder (teacher folder or student run).

    Returns:
        DataFrame indexed by label; columns ``AR@1, AR@5, AR@10, AR@1%`` then ``AR@1 <run name>``.
    """
    rows = {}
    for label, folder in runs.items():
        test = read_metrics(folder).get("test") or {}
        row = {k: test.get(k) for k in ("AR@1", "AR@5", "AR@10", "AR@1%")}
        for run_name, value in (test.get("per_run_AR@1") or {}).items():
            row[f"AR@1 {run_name}"] = value
        rows[label] = row
    return pd.DataFrame.from_dict(rows, orient="index").astype(float)


def embedding_norm_table(metrics: Mapping[str, Any], curvature: float = 0.1) -> pd.DataFrame:
    """Student / teacher embedding norms and where they land in the Poincaré ball of curvature ``c``.

    For a raw vector of norm r, expmap0 gives radius tanh(√c·r)/√c; the ball's boundary is 1/√c.
    ``ball_radius_fraction`` close to 1 means the hyperbolic self-agent term saturates (METHOD.md §10.5).
    """
    sqrt_c = math.sqrt(curvature)
    rows = {}
    for who, stats in (metrics.get("embedding_norms") or {}).items():
        for stat in ("mean", "max"):
            r = (stats or {}).get(stat)
            if r is None:
                continue
            frac = math.tanh(min(sqrt_c * float(r), 15.0))
            rows[f"{who} ({stat})"] = {"norm": float(r), "ball_radius_fraction": frac,
                                       "saturated (>0.99)": frac > 0.99}
    return pd.DataFrame.from_dict(rows, orient="index")


def _ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "ok"] if "status" in runs else runs


def _metric_columns(runs: pd.DataFrame) -> list[str]:
    return [f"test.{m}" for m in TABLE_METRICS if f"test.{m}" in runs]


def ablation_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean ± std over seeds per variation (test split), as strings ``"m ± s"`` plus the seed count.

    Args:
        runs: :func:`distilvpr_lib.batch.collect_batch` output.
    """
    ok = _ok(runs)
    cols = _metric_columns(ok)
    if ok.empty or not cols:
        return pd.DataFrame(columns=["n_seeds", *TABLE_METRICS])
    grouped = ok.groupby("variation")[cols]
    mean, std, count = grouped.mean(), grouped.std(ddof=1), grouped.count()
    table = pd.DataFrame(index=mean.index)
    table["n_seeds"] = count[cols[0]]
    for col in cols:
        table[col.removeprefix("test.")] = [
            f"{m:.2f} ± {s:.2f}" if not np.isnan(s) else f"{m:.2f}" for m, s in zip(mean[col], std[col])]
    return table.sort_values(cols[0].removeprefix("test."), ascending=False, key=lambda s: s.str.split().str[0].astype(float))


def paired_differences(runs: pd.DataFrame, baseline: str = "nokd") -> pd.DataFrame:
    """Difference of each variation to ``baseline``, paired by seed, with a paired t-test p-value.

    Returns:
        DataFrame indexed by variation with, per metric, the mean difference, its std, the number of
        paired seeds and the two-sided p-value (NaN with fewer than 2 pairs).
    """
    from scipy import stats

    ok = _ok(runs)
    if "param.seed" not in ok or baseline not in set(ok["variation"]):
        return pd.DataFrame()
    rows = {}
    base = ok[ok.variation == baseline].set_index("param.seed")
    for variation, group in ok[ok.variation != baseline].groupby("variation"):
        g = group.set_index("param.seed")
        seeds = sorted(set(g.index) & set(base.index))
        row: dict[str, Any] = {"n_pairs": len(seeds)}
        for col in _metric_columns(ok):
            d = g.loc[seeds, col].to_numpy(float) - base.loc[seeds, col].to_numpy(float)
            name = col.removeprefix("test.")
            row[f"Δ{name}"] = float(d.mean()) if len(d) else np.nan
            row[f"Δ{name} std"] = float(d.std(ddof=1)) if len(d) > 1 else np.nan
            row[f"p {name}"] = float(stats.ttest_rel(g.loc[seeds, col], base.loc[seeds, col]).pvalue) \
                if len(d) > 1 and np.any(d != d[0]) else np.nan
        rows[variation] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def curvature_sweep(runs: pd.DataFrame, method: str = "distilvpr") -> pd.DataFrame:
    """AR@1 mean ± std per curvature for runs of ``method`` (the default c = 0.1 when not set)."""
    ok = _ok(runs)
    if "param.method" not in ok:
        return pd.DataFrame()
    sel = ok[ok["param.method"] == method].copy()
    curv = sel["param.curvature"] if "param.curvature" in sel else pd.Series(np.nan, index=sel.index)
    sel["curvature"] = curv.fillna(0.1).astype(float)
    if sel["curvature"].nunique() < 2:
        return pd.DataFrame()
    cols = _metric_columns(sel)
    return sel.groupby("curvature")[cols].agg(["mean", "std", "count"])


def loss_magnitudes(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds of every named loss term's final (last-epoch mean) magnitude, per variation."""
    ok = _ok(runs)
    cols = [c for c in ok.columns if c.startswith("final_losses.")]
    if not cols:
        return pd.DataFrame()
    table = ok.groupby("variation")[cols].mean()
    table.columns = [c.removeprefix("final_losses.") for c in table.columns]
    return table.dropna(axis=1, how="all")
