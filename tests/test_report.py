"""Tables of analysis.report on hand-made batch frames (numbers computed by hand)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distilvpr_lib.analysis.report import (ablation_table, comparison_table, curvature_sweep, embedding_norm_table,
                                         loss_magnitudes, paired_differences)


def _runs() -> pd.DataFrame:
    rows = []
    for seed, (base, full, c1) in enumerate([(50.0, 54.0, 52.0), (52.0, 55.0, 51.0), (54.0, 59.0, 53.0)]):
        rows.append({"variation": "nokd", "status": "ok", "param.seed": seed, "param.method": "nokd",
                     "test.AR@1": base, "test.AR@5": base + 10, "test.AR@1%": base + 20, "final_losses.triplet": 0.3})
        rows.append({"variation": "distilvpr", "status": "ok", "param.seed": seed, "param.method": "distilvpr",
                     "test.AR@1": full, "test.AR@5": full + 10, "test.AR@1%": full + 20, "final_losses.triplet": 0.2,
                     "final_losses.rkdg_distance": 0.05})
        rows.append({"variation": "curvature-1.0", "status": "ok", "param.seed": seed, "param.method": "distilvpr",
                     "param.curvature": 1.0, "test.AR@1": c1, "test.AR@5": c1, "test.AR@1%": c1})
    rows.append({"variation": "broken", "status": "failed", "param.seed": 0, "test.AR@1": np.nan})
    return pd.DataFrame(rows)


def test_ablation_table_mean_std_over_seeds() -> None:
    table = ablation_table(_runs())
    assert "broken" not in table.index
    assert table.loc["nokd", "AR@1"] == "52.00 ± 2.00"
    assert table.loc["distilvpr", "AR@1"] == "56.00 ± 2.65"  # std of 54, 55, 59 (ddof=1) = 2.646
    assert table.loc["nokd", "n_seeds"] == 3
    assert list(table.index)[0] == "distilvpr"  # sorted by AR@1


def test_paired_differences_against_nokd() -> None:
    diff = paired_differences(_runs(), baseline="nokd")
    assert diff.loc["distilvpr", "ΔAR@1"] == pytest.approx(4.0)  # (4 + 3 + 5) / 3
    assert diff.loc["distilvpr", "ΔAR@1 std"] == pytest.approx(1.0)
    # paired t = 4 / (1 / sqrt(3)) = 6.93, df = 2 -> p = 0.0202
    assert diff.loc["distilvpr", "p AR@1"] == pytest.approx(0.0202, abs=5e-4)
    assert diff.loc["distilvpr", "n_pairs"] == 3


def test_curvature_sweep_and_loss_magnitudes() -> None:
    sweep = curvature_sweep(_runs())
    assert list(sweep.index) == [0.1, 1.0]
    assert sweep.loc[1.0, ("test.AR@1", "mean")] == pytest.approx(52.0)
    mags = loss_magnitudes(_runs())
    assert mags.loc["distilvpr", "rkdg_distance"] == pytest.approx(0.05)
    assert np.isnan(mags.loc["nokd", "rkdg_distance"])


def test_comparison_and_norm_tables(tmp_path: Path) -> None:
    for name, ar1 in (("t", 90.0), ("s", 60.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"test": {"AR@1": ar1, "AR@5": 95.0, "AR@10": 97.0, "AR@1%": 98.0, "per_run_AR@1": {"run-a": ar1}}}))
    table = comparison_table({"teacher": tmp_path / "t", "student": tmp_path / "s"})
    assert table.loc["teacher", "AR@1"] == 90.0 and table.loc["student", "AR@1 run-a"] == 60.0
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        comparison_table({"x": tmp_path})
    norms = embedding_norm_table({"embedding_norms": {"student": {"mean": 1.0, "max": 20.0}}}, curvature=0.1)
    assert norms.loc["student (mean)", "ball_radius_fraction"] == pytest.approx(np.tanh(np.sqrt(0.1)))
    assert bool(norms.loc["student (max)", "saturated (>0.99)"]) is True
