"""Helpers of the data-exploration notebook (01) that are not figures: short written verdicts of the
realism and premise tables, and the notebook's summary dict for ``metrics.json``. (Making sure the
dataset exists runs the generator: :func:`distilvpr_lib.commands.synth.ensure_dataset`.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

__all__ = ["realism_verdict", "premise_verdict", "exploration_summary"]


def realism_verdict(table: pd.DataFrame, tolerance: float = 0.15) -> str:
    """A markdown sentence on a realism table (``generated``, ``real``, ``relative_error``,
    ``within_tolerance`` per statistic): which statistics meet the goal and which do not, by how much."""
    if table is None or len(table) == 0:
        return "No realism table (no real sub-maps given)."
    ok_col = "within_tolerance" if "within_tolerance" in table.columns else None
    if ok_col is None:
        ok = table["relative_error"] <= tolerance
    else:
        ok = table[ok_col].astype(bool)
    bad = table[~ok]
    head = f"**{int(ok.sum())} of {len(table)}** statistics are within {tolerance:.0%} of the real median."
    if len(bad) == 0:
        return head + " All meet the goal."
    details = "; ".join(f"`{name}`: generated {row['generated']:.4g} vs real {row['real']:.4g} "
                        f"({row['relative_error']:.0%} off)" for name, row in bad.iterrows())
    return head + f" Not within the goal: {details}."


def _is_control(table: pd.DataFrame) -> pd.Series:
    """Rows pairing the reference run with itself (the premise table's same-condition control)."""
    control = pd.Series(False, index=table.index)
    if "archetype" in table.columns:
        control |= table["archetype"].astype(str).str.contains("control")
    return control


def premise_verdict(table: pd.DataFrame) -> str:
    """A markdown sentence on a premise table (``image_auc``, ``cloud_auc`` per run): whether, for
    the same places across runs, images separate same/different places less well than clouds.
    A control row (the reference run against itself, same condition) is reported separately."""
    if table is None or len(table) == 0:
        return "No premise table."
    control = _is_control(table)
    runs = table[~control]
    if len(runs) == 0:
        return "The premise table has no cross-run row."
    image, cloud = float(runs["image_auc"].mean()), float(runs["cloud_auc"].mean())
    holds = int((runs["cloud_auc"] > runs["image_auc"]).sum())
    worst = runs.loc[runs["image_auc"].idxmin()] if runs["image_auc"].notna().any() else runs.iloc[0]
    cond = ", ".join(str(worst[c]) for c in ("archetype", "season") if c in runs.columns and worst[c])
    text = (f"Across runs (mean ROC AUC, same place vs different place, {len(runs)} runs against the reference): "
            f"**images {image:.2f}**, **clouds {cloud:.2f}**; clouds separate places better than images in {holds} "
            f"of {len(runs)} runs. Hardest run for images: {worst['run']}" + (f" ({cond})" if cond else "") +
            f", image AUC {float(worst['image_auc']):.2f} vs cloud AUC {float(worst['cloud_auc']):.2f}.")
    if control.any():
        row = table[control].iloc[0]
        text += (f" Control (the reference run against itself, no condition change): images "
                 f"{float(row['image_auc']):.2f}, clouds {float(row['cloud_auc']):.2f}.")
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        try:
            return _clean(value.item())
        except (TypeError, ValueError):
            return value
    return value


def exploration_summary(benchmark: Any, realism: pd.DataFrame | None = None, premise: pd.DataFrame | None = None,
                        conditions: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The numbers notebook 01 writes to ``metrics.json``.

    Keys: ``dataset``, ``layout``, ``runs``, ``conditions``, ``split_sizes`` (totals),
    ``split_sizes_per_run``, ``positives`` / ``non_negatives`` (median, min, max per training
    tuple), ``realism`` (per statistic: generated, real, relative_error, within_tolerance),
    ``premise`` (per run: image_auc, cloud_auc, ...; plus means).
    """
    from distilvpr_lib.viz.figures import split_size_table

    sizes = split_size_table(benchmark)
    tuples = list(benchmark.training_tuples.values())
    out: dict[str, Any] = {
        "dataset": str(benchmark.dataset_dir),
        "layout": benchmark.layout,
        "runs": list(benchmark.run_names),
        "conditions": dict(conditions or {}),
        "has_images": bool(benchmark.has_images),
        "split_sizes": {k: int(v) for k, v in sizes.loc["total"].items()},
        "split_sizes_per_run": {run: {k: int(v) for k, v in row.items()} for run, row in sizes.drop(index="total").iterrows()},
    }
    for name, attr in (("positives", "positives"), ("non_negatives", "non_negatives")):
        counts = pd.Series([len(getattr(t, attr)) for t in tuples], dtype=float)
        out[name] = {"median": _clean(counts.median()), "min": _clean(counts.min()), "max": _clean(counts.max()),
                     "without_any": int((counts == 0).sum())} if len(counts) else {}
    if realism is not None and len(realism):
        out["realism"] = {str(stat): {k: _clean(v) for k, v in row.items()} for stat, row in realism.iterrows()}
        if "within_tolerance" in realism.columns:
            out["realism_within_tolerance"] = int(realism["within_tolerance"].astype(bool).sum())
    if premise is not None and len(premise):
        out["premise"] = [{k: _clean(v) for k, v in rec.items()} for rec in premise.to_dict(orient="records")]
        runs = premise[~_is_control(premise)]
        out["premise_mean_image_auc"] = _clean(float(runs["image_auc"].mean()))  # across runs (control left out)
        out["premise_mean_cloud_auc"] = _clean(float(runs["cloud_auc"].mean()))
    return out
