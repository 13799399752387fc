"""The benchmark's statistics (docs/benchmark/PROTOCOL.md §7): paired comparisons over seeds, Holm's correction,
the smallest detectable effect and the verdict rule.

Every comparison pairs two rows run with the same seeds (same initialisation, batch order and teacher), so the
per-seed difference Δ_k = first_k − second_k removes the seed-to-seed spread both share. The primary test is the
paired t-test with its t interval; the BCa bootstrap interval and the exact Wilcoxon signed-rank test are
secondary (the Wilcoxon p cannot fall below 2 / 2ⁿ, 0.0625 at n = 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from distilvpr_lib.analysis.report import bootstrap_mean_ci

#: Keys of :func:`paired_comparison`.
COMPARISON_KEYS: tuple[str, ...] = ("n", "mean_first", "sd_first", "mean_second", "sd_second", "delta", "sd_delta",
                                    "t_low", "t_high", "p_t", "bca_low", "bca_high", "p_wilcoxon", "wilcoxon_floor",
                                    "mde")
#: The verdicts of :func:`verdict`.
BEATS, BEATEN, NO_DIFFERENCE = "beats", "is beaten by", "no detectable difference"


def _sd(x: np.ndarray) -> float:
    return float(x.std(ddof=1)) if x.size > 1 else math.nan


def wilcoxon_floor(n: int) -> float:
    """The smallest two-sided exact Wilcoxon signed-rank p-value with ``n`` non-zero pairs: ``2 / 2**n``."""
    return min(1.0, 2.0 / 2.0 ** n) if n > 0 else math.nan


def minimum_detectable_effect(sd_delta: float, n: int, alpha: float = 0.05, power: float = 0.80) -> float:
    """Smallest mean paired difference a two-sided paired t-test detects with ``power``:
    ``(t_{1−α/2, n−1} + t_{power, n−1}) · sd_Δ / √n`` (the usual t approximation)."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd_delta):
        return math.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd_delta / math.sqrt(n))


def paired_comparison(first: Sequence[float], second: Sequence[float], confidence: float = 0.95,
                      n_resamples: int = 10000, seed: int = 0) -> dict[str, Any]:
    """One paired comparison of two rows over the same seeds (PROTOCOL §7).

    Args:
        first: (n,) metric of the first row, one value per seed.
        second: (n,) metric of the second row for the same seeds, in the same order.
        confidence: level of both intervals.
        n_resamples: bootstrap resamples of the BCa interval (resampling generator seeded with ``seed``).

    Returns:
        :data:`COMPARISON_KEYS`: the two rows' means and sample standard deviations, ``delta`` = mean Δ and
        ``sd_delta``; ``t_low``/``t_high`` the t interval of the mean Δ and ``p_t`` the two-sided paired t-test;
        ``bca_low``/``bca_high`` the BCa interval; ``p_wilcoxon`` (exact, two-sided; NaN when every Δ is 0) and
        its ``wilcoxon_floor``; ``mde`` the smallest effect detectable with 80 % power at 5 % two-sided. With
        n < 2 the spreads, intervals and p-values are NaN; with every Δ equal the t interval is that Δ and p_t is
        NaN (no spread to test against); a spread below 1e-9 of |Δ| (float rounding of equal differences) counts as
        none.

    Raises:
        ValueError: the two rows have different lengths.
    """
    from scipy import stats

    a, b = np.asarray(first, dtype=float), np.asarray(second, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired rows need the same seeds: got {a.shape} and {b.shape} values")
    d = a - b
    n = int(d.size)
    out: dict[str, Any] = {"n": n, "mean_first": float(a.mean()) if n else math.nan, "sd_first": _sd(a),
                           "mean_second": float(b.mean()) if n else math.nan, "sd_second": _sd(b),
                           "delta": float(d.mean()) if n else math.nan, "sd_delta": _sd(d)}
    out.update(t_low=math.nan, t_high=math.nan, p_t=math.nan, p_wilcoxon=math.nan)
    if n >= 2:
        sd = out["sd_delta"]
        if sd <= 1e-9 * max(1.0, abs(out["delta"])):  # equal differences up to float rounding: no spread to test
            sd = out["sd_delta"] = 0.0
        half = stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
        out["t_low"], out["t_high"] = out["delta"] - half, out["delta"] + half
        if sd > 0:
            out["p_t"] = float(stats.ttest_rel(a, b).pvalue)
        if np.any(d != 0):
            out["p_wilcoxon"] = float(stats.wilcoxon(a, b, method="exact" if np.all(d != 0) else "auto").pvalue)
    out["bca_low"], out["bca_high"] = bootstrap_mean_ci(d, confidence, n_resamples, "BCa", seed)
    out["wilcoxon_floor"] = wilcoxon_floor(int(np.count_nonzero(d)))
    out["mde"] = minimum_detectable_effect(out["sd_delta"], n)
    return {k: out[k] for k in COMPARISON_KEYS}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input order.

    Sorted ascending, the k-th smallest (k = 0..m−1) becomes ``max_{j ≤ k} min(1, (m − j) · p_(j))``; a p-value is
    rejected at level α exactly when its adjusted value is < α. NaN p-values (untestable comparisons) stay NaN and
    do not count in m.

    Args:
        pvalues: (m,) raw p-values of one family.

    Returns:
        (m,) adjusted p-values.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    running = 0.0
    for rank, idx in enumerate(finite[np.argsort(p[finite], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def verdict(delta: float, p_adjusted: float, alpha: float = 0.05) -> str:
    """PROTOCOL §7: ``"beats"`` when Δ > 0 and the Holm-adjusted p < α, ``"is beaten by"`` when Δ < 0 and
    p < α, else ``"no detectable difference"`` (also when p is NaN)."""
    if math.isfinite(p_adjusted) and p_adjusted < alpha:
        if delta > 0:
            return BEATS
        if delta < 0:
            return BEATEN
    return NO_DIFFERENCE
