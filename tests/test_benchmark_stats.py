"""The benchmark's statistics (analysis.benchmark_stats) against hand computations (PROTOCOL §7)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distilvpr_lib.analysis.benchmark_stats import (BEATEN, BEATS, NO_DIFFERENCE, holm, minimum_detectable_effect,
                                                    paired_comparison, verdict, wilcoxon_floor)

# Student t quantiles with 4 degrees of freedom (tables): t_0.975 = 2.776445, t_0.80 = 0.940965.
T975_4, T80_4 = 2.7764451052, 0.9409645724


def _t_cdf_df4(t: float) -> float:
    """Closed form of Student's t CDF with 4 degrees of freedom: F(t) = 1/2 + (3u/4)(1 − u²/3), u = t / √(4 + t²)."""
    u = t / math.sqrt(4 + t * t)
    return 0.5 + 0.75 * u * (1 - u * u / 3)


def test_paired_comparison_by_hand():
    first = [11.0, 12.0, 13.0, 14.0, 15.0]
    second = [10.0, 10.0, 10.0, 10.0, 10.0]   # Δ = 1, 2, 3, 4, 5
    r = paired_comparison(first, second)
    assert r["n"] == 5
    assert r["mean_first"] == pytest.approx(13.0) and r["mean_second"] == pytest.approx(10.0)
    assert r["sd_first"] == pytest.approx(math.sqrt(2.5)) and r["sd_second"] == 0.0
    assert r["delta"] == pytest.approx(3.0) and r["sd_delta"] == pytest.approx(math.sqrt(2.5))
    half = T975_4 * math.sqrt(2.5) / math.sqrt(5)              # 1.9632...
    assert r["t_low"] == pytest.approx(3.0 - half, abs=1e-6) and r["t_high"] == pytest.approx(3.0 + half, abs=1e-6)
    t = 3.0 / (math.sqrt(2.5) / math.sqrt(5))                  # 4.2426
    assert r["p_t"] == pytest.approx(2 * (1 - _t_cdf_df4(t)), rel=1e-6)
    assert r["p_wilcoxon"] == pytest.approx(2 / 32)            # every Δ positive: the exact test's floor
    assert r["wilcoxon_floor"] == pytest.approx(0.0625)
    assert r["mde"] == pytest.approx((T975_4 + T80_4) * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert r["bca_low"] < 3.0 < r["bca_high"]
    assert 1.0 <= r["bca_low"] and r["bca_high"] <= 5.0        # a bootstrap of the mean stays within the data


def test_closed_form_is_the_t_distribution():
    from scipy import stats
    for t in (0.3, 1.0, 2.776445, 4.24):
        assert _t_cdf_df4(t) == pytest.approx(stats.t.cdf(t, 4), abs=1e-10)


def test_paired_comparison_sign_and_degenerate_cases():
    r = paired_comparison([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])   # Δ = -1, -2, -2
    assert r["delta"] == pytest.approx(-5 / 3) and r["t_high"] < 0
    same = paired_comparison([3.0, 4.0], [1.0, 2.0])          # every Δ = 2: no spread to test
    assert same["t_low"] == same["t_high"] == 2.0 and math.isnan(same["p_t"])
    rounding = paired_comparison([0.3, 1.3], [0.1, 1.1])  # Δ = 0.2 twice, up to float rounding (0.19999999999999998)
    assert rounding["sd_delta"] == 0.0 and math.isnan(rounding["p_t"])  # not "p ≈ 0, beats"
    one = paired_comparison([3.0], [1.0])
    assert one["delta"] == 2.0 and math.isnan(one["t_low"]) and math.isnan(one["p_t"]) and math.isnan(one["mde"])
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison([1.0, 2.0], [1.0])


def test_holm_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> max(0.06, 0.04) = 0.06
    assert np.allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    assert np.allclose(holm([0.5, 0.9]), [1.0, 1.0])           # capped at 1
    adjusted = holm([0.02, math.nan, 0.01])                     # NaN stays NaN and is not counted: m = 2
    assert math.isnan(adjusted[1]) and np.allclose(adjusted[[0, 2]], [0.02, 0.02])
    assert holm([]).size == 0


def test_verdict_rule():
    assert verdict(1.2, 0.01) == BEATS
    assert verdict(-1.2, 0.01) == BEATEN
    assert verdict(5.0, 0.06) == NO_DIFFERENCE
    assert verdict(5.0, math.nan) == NO_DIFFERENCE


def test_wilcoxon_floor_and_mde():
    assert wilcoxon_floor(5) == pytest.approx(0.0625) and wilcoxon_floor(1) == 1.0
    assert math.isnan(minimum_detectable_effect(1.0, 1))
    assert minimum_detectable_effect(2.0, 5) == pytest.approx(2 * minimum_detectable_effect(1.0, 5))
