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


def config_table(cfg: Any) -> pd.DataFrame:
    """What a run's config sets differently from its profile, one row per ``section.field`` with columns
    ``profile`` and ``this run`` (:func:`distilvpr_lib.config.config_changes`); empty when nothing differs."""
    from distilvpr_lib.config import config_changes

    changes = config_changes(cfg)
    rows = {key: {"profile": repr(old), "this run": repr(new)} for key, (old, new) in changes.items()}
    table = pd.DataFrame.from_dict(rows, orient="index", columns=["profile", "this run"])
    table.index.name = f"{cfg.profile} profile"
    return table


def embedding_norm_table(metrics: Mapping[str, Any], curvature: float = 0.1) -> pd.DataFrame:
    """Student / teacher embedding norms and where they land in the Poincaré ball of curvature ``c``.

    For a raw vector of norm r, expmap0 gives radius tanh(√c·r)/√c; the ball's boundary is 1/√c.
    ``ball_radius_fraction`` close to 1 means the hyperbolic self-agent term saturates (docs/METHOD.md §8.5).
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


# ---------------------------------------------------------------------------
# Paired statistics over seeds (the study, docs/study/LOG.md)
# ---------------------------------------------------------------------------
#: Columns of :func:`paired_statistics`.
PAIRED_COLUMNS: tuple[str, ...] = ("n_pairs", "mean", "std", "baseline_mean", "baseline_std", "delta", "delta_std",
                                   "ci_low", "ci_high", "p_t", "p_wilcoxon")


def bootstrap_mean_ci(differences: np.ndarray, confidence: float = 0.95, n_resamples: int = 10000,
                      method: str = "BCa", seed: int = 0) -> tuple[float, float]:
    """Bootstrap confidence interval of the mean of paired differences (``scipy.stats.bootstrap``).

    Args:
        differences: (n,) per-seed differences (variation − baseline).
        confidence: confidence level.
        n_resamples: bootstrap resamples.
        method: ``"BCa"`` (bias-corrected and accelerated, scipy's default), ``"percentile"`` or ``"basic"``.
        seed: seed of the resampling (the interval is reproducible).

    Returns:
        ``(low, high)``; ``(d, d)`` when every difference equals ``d``; ``(nan, nan)`` with fewer than 2.
    """
    from scipy import stats

    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return (math.nan, math.nan)
    if np.all(d == d[0]):
        return (float(d[0]), float(d[0]))
    res = stats.bootstrap((d,), np.mean, confidence_level=confidence, n_resamples=n_resamples, method=method,
                          random_state=np.random.default_rng(seed), vectorized=True)
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_statistics(runs: pd.DataFrame, baseline: str = "nokd", metric: str = "test.AR@1",
                      confidence: float = 0.95, n_resamples: int = 10000, method: str = "BCa",
                      seed: int = 0) -> pd.DataFrame:
    """Every variation against ``baseline``, paired by seed: mean ± std, Δ with a bootstrap CI, t and Wilcoxon.

    The same seed means the same initialisation and batch order, so the per-seed difference removes the
    seed-to-seed spread that both runs share. For each variation with at least one seed in common with
    the baseline:

    * ``mean``/``std`` (ddof=1) of the variation over its paired seeds, ``baseline_mean``/``baseline_std``;
    * ``delta`` = mean of the differences, ``delta_std`` their std;
    * ``ci_low``/``ci_high``: the ``confidence`` bootstrap interval of the mean difference
      (:func:`bootstrap_mean_ci`);
    * ``p_t``: two-sided paired t-test (``scipy.stats.ttest_rel``); ``p_wilcoxon``: two-sided Wilcoxon
      signed-rank test (exact for small n; NaN when all differences are 0).

    Args:
        runs: :func:`distilvpr_lib.batch.collect_batch` output or the study CSV (columns ``variation``,
            ``param.seed`` or ``seed``, ``metric``; rows with a ``status`` other than ``ok`` are ignored).
        baseline: the variation every other is compared to.
        metric: the column compared.

    Returns:
        DataFrame indexed by variation (the baseline excluded), columns :data:`PAIRED_COLUMNS`, sorted by
        ``delta`` descending. Empty when the baseline is absent.
    """
    from scipy import stats

    ok = _ok(runs)
    seed_col = "param.seed" if "param.seed" in ok else "seed"
    if ok.empty or seed_col not in ok or metric not in ok or baseline not in set(ok["variation"]):
        return pd.DataFrame(columns=list(PAIRED_COLUMNS))
    base = ok[ok.variation == baseline].groupby(seed_col)[metric].mean()
    rows = {}
    for variation, group in ok[ok.variation != baseline].groupby("variation"):
        values = group.groupby(seed_col)[metric].mean()
        seeds = sorted(set(values.index) & set(base.index))
        if not seeds:
            continue
        v, b = values.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float)
        d = v - b
        n = len(d)
        row: dict[str, Any] = {
            "n_pairs": n, "mean": float(v.mean()), "std": float(v.std(ddof=1)) if n > 1 else math.nan,
            "baseline_mean": float(b.mean()), "baseline_std": float(b.std(ddof=1)) if n > 1 else math.nan,
            "delta": float(d.mean()), "delta_std": float(d.std(ddof=1)) if n > 1 else math.nan,
        }
        row["ci_low"], row["ci_high"] = bootstrap_mean_ci(d, confidence, n_resamples, method, seed)
        varying = n > 1 and np.any(d != d[0])
        row["p_t"] = float(stats.ttest_rel(v, b).pvalue) if varying else math.nan
        row["p_wilcoxon"] = float(stats.wilcoxon(v, b).pvalue) if n > 1 and np.any(d != 0) else math.nan
        rows[variation] = row
    table = pd.DataFrame.from_dict(rows, orient="index", columns=list(PAIRED_COLUMNS))
    return table.sort_values("delta", ascending=False)


def choose_on_validation(runs: pd.DataFrame, prefix: str = "distilvpr",
                         metric: str = "validation.AR@1") -> pd.DataFrame:
    """Choose one of the variations named ``prefix...`` (e.g. the weight sweep) on the **validation** split.

    The candidates are compared on the seeds that every one of them has finished (so a row with more seeds
    is not favoured or penalised by its extra seeds); the chosen one has the highest mean ``metric`` there
    (ties: the first name in sort order). Test metrics are not read. Report the chosen variation's test
    result with :func:`study_table` / :func:`paired_statistics` over all its seeds.

    Args:
        runs: :func:`distilvpr_lib.batch.collect_batch` output or the study CSV (``seed``/``val_AR@1``
            columns are accepted for ``param.seed``/``validation.AR@1``); runs not ``ok`` are ignored.
        prefix: candidates are the variations whose name starts with it.
        metric: the validation column compared.

    Returns:
        DataFrame indexed by candidate, best first: ``seeds`` (finished seeds), ``val_AR@1 (all seeds)``,
        ``val_AR@1 (common seeds)`` and ``chosen`` (True for one row); ``attrs["common_seeds"]`` lists the
        seeds compared. Empty when there is no candidate or no seed common to all.
    """
    columns = ["seeds", "val_AR@1 (all seeds)", "val_AR@1 (common seeds)", "chosen"]
    ok = _ok(runs)
    seed_col = "param.seed" if "param.seed" in ok else "seed"
    if metric not in ok and metric == "validation.AR@1" and "val_AR@1" in ok:
        metric = "val_AR@1"
    if ok.empty or seed_col not in ok or metric not in ok:
        return pd.DataFrame(columns=columns)
    candidates = ok[ok["variation"].astype(str).str.startswith(prefix)]
    per_seed = candidates.groupby(["variation", seed_col])[metric].mean().unstack(seed_col)
    common = [s for s in per_seed.columns if per_seed[s].notna().all()]
    if per_seed.empty or not common:
        return pd.DataFrame(columns=columns)
    table = pd.DataFrame({"seeds": per_seed.notna().sum(axis=1).astype(int),
                          "val_AR@1 (all seeds)": per_seed.mean(axis=1),
                          "val_AR@1 (common seeds)": per_seed[common].mean(axis=1)})
    table = table.sort_index().sort_values("val_AR@1 (common seeds)", ascending=False, kind="stable")
    table["chosen"] = [i == 0 for i in range(len(table))]
    table.index.name = None
    table.attrs["common_seeds"] = [int(s) for s in common]
    return table


def study_table(runs: pd.DataFrame, baseline: str = "nokd", metrics: tuple[str, ...] = TABLE_METRICS,
                **kwargs: Any) -> pd.DataFrame:
    """The study table: per variation mean ± std of each test metric, and Δ AR@1 to ``baseline``
    paired by seed with its bootstrap CI and p-values (t, Wilcoxon).

    Args:
        runs: as :func:`paired_statistics`.
        kwargs: passed to :func:`paired_statistics` (``confidence``, ``n_resamples``, ``method``, ``seed``).

    Returns:
        DataFrame indexed by variation: ``seeds``, ``<metric>`` (test) and ``val AR@1`` (validation, when
        present) as ``"m ± s"`` strings, ``ΔAR@1``,
        ``95% CI``, ``p (t)``, ``p (Wilcoxon)`` (blank where undefined: a variation with one paired seed has a
        difference but no interval and no test); the baseline first, then by Δ.
    """
    ok = _ok(runs)
    seed_col = "param.seed" if "param.seed" in ok else "seed"
    cols = [m for m in metrics if f"test.{m}" in ok]
    val_col = next((c for c in ("validation.AR@1", "val_AR@1") if c in ok), None)
    rows: dict[str, dict[str, Any]] = {}
    for variation, group in ok.groupby("variation"):
        row: dict[str, Any] = {"seeds": int(group[seed_col].nunique())}
        for m, col in [(m, f"test.{m}") for m in cols] + ([("val AR@1", val_col)] if val_col else []):
            x = group[col].to_numpy(float)
            row[m] = f"{x.mean():.2f} ± {x.std(ddof=1):.2f}" if len(x) > 1 else f"{x.mean():.2f}"
        rows[str(variation)] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    paired = paired_statistics(ok, baseline=baseline, metric="test.AR@1", **kwargs)
    level = int(round(100 * kwargs.get("confidence", 0.95)))
    table["ΔAR@1"] = ""
    table[f"{level}% CI"] = ""
    table["p (t)"] = ""
    table["p (Wilcoxon)"] = ""
    for variation, p in paired.iterrows():
        table.loc[variation, "ΔAR@1"] = f"{p['delta']:+.2f}"
        if not (math.isnan(p["ci_low"]) or math.isnan(p["ci_high"])):  # one pair: no interval
            table.loc[variation, f"{level}% CI"] = f"[{p['ci_low']:+.2f}, {p['ci_high']:+.2f}]"
        table.loc[variation, "p (t)"] = "" if math.isnan(p["p_t"]) else f"{p['p_t']:.3f}"
        table.loc[variation, "p (Wilcoxon)"] = "" if math.isnan(p["p_wilcoxon"]) else f"{p['p_wilcoxon']:.3f}"
    order = ([baseline] if baseline in table.index else []) + [v for v in paired.index if v in table.index]
    order += [v for v in table.index if v not in order]
    return table.loc[order]


def relation_auc(embeddings: np.ndarray, positives: np.ndarray, negatives: np.ndarray,
                 relations: tuple[str, ...] = ("euclidean", "cosine", "hyperbolic"), curvature: float = 0.1) -> dict[str, float]:
    """How much place information a self relation matrix carries: ROC AUC of positive vs negative pairs.

    The relations are those the distillation terms hand down (docs/METHOD.md §4.3–§4.4): Euclidean distances
    ``‖x_i − x_j‖``, cosine similarities, and geodesic distances ``d_c`` in the Poincaré ball after
    ``ToPoincare``. A pair scores higher when it is more similar (distances are negated); AUC = 1 means
    every positive pair is closer than every negative pair, 0.5 means the relation says nothing about place.

    Args:
        embeddings: (N, D) embeddings of N samples (e.g. a validation split).
        positives: (N, N) bool, pairs of the same place (e.g. within 10 m), diagonal ignored.
        negatives: (N, N) bool, pairs of different places (e.g. beyond 50 m).
        relations: which relations to score.
        curvature: ``c`` of the hyperbolic relation.

    Returns:
        relation -> ROC AUC (NaN when there are no positive or no negative pairs).
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from distilvpr_lib.losses.relations import (cosine_similarity_matrix, euclidean_distance_matrix,
                                                hyperbolic_distance_matrix)

    x = torch.as_tensor(np.asarray(embeddings), dtype=torch.float64)
    n = x.shape[0]
    upper = np.triu(np.ones((n, n), dtype=bool), k=1)
    pos, neg = np.asarray(positives, bool) & upper, np.asarray(negatives, bool) & upper & ~np.asarray(positives, bool)
    if not pos.any() or not neg.any():
        return {r: math.nan for r in relations}
    scorers = {
        "euclidean": lambda: -euclidean_distance_matrix(x),
        "cosine": lambda: cosine_similarity_matrix(x),
        "hyperbolic": lambda: -hyperbolic_distance_matrix(x, None, curvature),
    }
    unknown = set(relations) - set(scorers)
    if unknown:
        raise KeyError(f"unknown relations {sorted(unknown)}; known: {sorted(scorers)}")
    labels = np.concatenate([np.ones(int(pos.sum())), np.zeros(int(neg.sum()))])
    out = {}
    for name in relations:
        score = scorers[name]().numpy()
        out[name] = float(roc_auc_score(labels, np.concatenate([score[pos], score[neg]])))
    return out


def epoch_table(run_dirs: Mapping[str, str | os.PathLike] | str | os.PathLike) -> pd.DataFrame:
    """Per-epoch history of runs, long format: what changes *while* a student learns.

    Args:
        run_dirs: a batch folder (every sub-folder with a ``metrics.json``; variation and seed from the folder
            name ``<variation>__seed<k>``) or a mapping label -> run folder.

    Returns:
        DataFrame with ``run``, ``variation``, ``seed``, ``epoch``, ``val_AR@1`` (NaN where not validated),
        ``loss.<term>`` (epoch means of the weighted terms) and ``<stat>`` for every logged statistic
        (``student_norm_mean``, ``teacher_norm_mean``, ``grad_norm/<term>``, ``grad_ratio/<term>``,
        ``hyperbolic_clamp_{student,teacher}``, ...).
    """
    if isinstance(run_dirs, Mapping):
        items = [(str(k), Path(v)) for k, v in run_dirs.items()]
    else:
        root = Path(run_dirs)
        items = [(p.name, p) for p in sorted(root.iterdir()) if (p / "metrics.json").is_file()] if root.is_dir() else []
    rows = []
    for label, folder in items:
        if not (folder / "metrics.json").is_file():
            continue
        metrics = read_metrics(folder)
        variation, _, seed = label.rpartition("__seed")
        if not variation:
            variation, seed = label, str(metrics.get("seed", ""))
        for record in metrics.get("epochs") or []:
            row: dict[str, Any] = {"run": label, "variation": variation,
                                   "seed": int(seed) if str(seed).isdigit() else seed, "epoch": int(record["epoch"])}
            val = record.get("validation") or {}
            row["val_AR@1"] = val.get("AR@1", math.nan)
            row.update({f"loss.{k}": v for k, v in (record.get("losses") or {}).items()})
            row.update(record.get("stats") or {})
            rows.append(row)
    return pd.DataFrame(rows)


def diagnostics_table(epochs: pd.DataFrame, last_fraction: float = 0.25) -> pd.DataFrame:
    """Per variation, the diagnostics averaged over the last ``last_fraction`` of the epochs and the seeds.

    Columns: ``val_AR@1`` (and its change over that window, ``val_AR@1 slope/epoch``: ≈ 0 when converged),
    the student and teacher norms, every ``grad_ratio/<term>`` (how hard each distillation term pulls on the
    student embedding relative to the task term), the hyperbolic clamp shares, and the task triplet's spread:
    its mined distances ``mean_pos_dist`` / ``mean_neg_dist`` (each anchor's hardest positive / negative, on
    the embeddings the task sees), ``active_fraction`` and its weighted loss ``loss.<task term>`` — equal
    distances with the loss at ``weight × margin`` is the degenerate point where the triplet no longer
    separates positives from negatives (docs/study/LOG.md, Result 7).

    Args:
        epochs: :func:`epoch_table` output.
    """
    if epochs.empty:
        return pd.DataFrame()
    from distilvpr_lib.engine.train.objectives import STUDENT_TASK_TERM

    keep = ["val_AR@1", "student_norm_mean", "teacher_norm_mean", "hyperbolic_clamp_student",
            "hyperbolic_clamp_teacher", *sorted(c for c in epochs.columns if c.startswith("grad_ratio/")),
            "mean_pos_dist", "mean_neg_dist", "active_fraction", f"loss.{STUDENT_TASK_TERM}"]
    keep = [c for c in keep if c in epochs]
    rows = {}
    for variation, group in epochs.groupby("variation"):
        last = int(group["epoch"].max())
        start = last - max(1, int(round(last * last_fraction))) + 1
        window = group[group["epoch"] >= start]
        row = window[keep].mean(numeric_only=True).to_dict()
        val = window.dropna(subset=["val_AR@1"]).groupby("epoch")["val_AR@1"].mean()
        row["val_AR@1 slope/epoch"] = float(np.polyfit(val.index.to_numpy(float), val.to_numpy(float), 1)[0]) \
            if len(val) >= 2 else math.nan
        row["epochs averaged"] = f"{start}-{last}"
        rows[variation] = row
    return pd.DataFrame.from_dict(rows, orient="index")
