"""The study's statistics and diagnostics against hand-computed cases (analysis.report, engine.trainer)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from distilvpr_lib.analysis.report import (bootstrap_mean_ci, choose_on_validation, paired_statistics, relation_auc,
                                         study_table)
from distilvpr_lib.engine.train.objectives import STUDENT_TASK_TERM, hyperbolic_clamp_share, term_gradient_norms

NOKD = [30.0, 32.0, 31.0, 29.0, 33.0]
DIFF = [3.0, 2.0, 4.0, 1.0, 5.0]  # no ties in |d|: the exact Wilcoxon distribution applies


def _runs() -> pd.DataFrame:
    rows = []
    for seed, (b, d) in enumerate(zip(NOKD, DIFF)):
        rows.append({"variation": "nokd", "seed": seed, "status": "ok", "test.AR@1": b, "test.AR@5": b + 10,
                     "test.AR@1%": b + 5})
        rows.append({"variation": "distilvpr", "seed": seed, "status": "ok", "test.AR@1": b + d,
                     "test.AR@5": b + 10, "test.AR@1%": b + 5})
    rows.append({"variation": "same", "seed": 0, "status": "ok", "test.AR@1": NOKD[0], "test.AR@5": 0, "test.AR@1%": 0})
    rows.append({"variation": "same", "seed": 1, "status": "ok", "test.AR@1": NOKD[1], "test.AR@5": 0, "test.AR@1%": 0})
    rows.append({"variation": "distilvpr", "seed": 9, "status": "failed", "test.AR@1": 99.0})
    return pd.DataFrame(rows)


def test_paired_statistics_by_hand() -> None:
    table = paired_statistics(_runs(), baseline="nokd", n_resamples=2000)
    row = table.loc["distilvpr"]
    assert row["n_pairs"] == 5  # the failed seed-9 run is ignored
    assert row["delta"] == pytest.approx(3.0)
    # differences 3, 2, 4, 1, 5: std (ddof=1) = sqrt(10 / 4)
    assert row["delta_std"] == pytest.approx(math.sqrt(2.5))
    assert row["mean"] == pytest.approx(34.0) and row["baseline_mean"] == pytest.approx(31.0)
    # paired t = 3 / (sqrt(2.5) / sqrt(5)) = 4.2426 with 4 degrees of freedom
    t = 3.0 / (math.sqrt(2.5) / math.sqrt(5.0))
    assert t == pytest.approx(4.2426, abs=1e-4)
    from scipy import stats

    assert row["p_t"] == pytest.approx(2 * stats.t.sf(t, df=4))
    assert row["p_t"] == pytest.approx(0.01324, abs=5e-5)
    # Wilcoxon: every difference positive, n = 5 -> W- = 0, exact two-sided p = 2 / 2^5
    assert row["p_wilcoxon"] == pytest.approx(2 / 32)
    assert row["ci_low"] <= 3.0 <= row["ci_high"]
    assert 1.0 <= row["ci_low"] and row["ci_high"] <= 5.0
    same = table.loc["same"]
    assert same["delta"] == 0.0 and (same["ci_low"], same["ci_high"]) == (0.0, 0.0)
    assert math.isnan(same["p_t"]) and math.isnan(same["p_wilcoxon"])
    assert list(table.index) == ["distilvpr", "same"]


def test_bootstrap_percentile_two_points_and_constant() -> None:
    # Resampling two values gives means 1, 2, 3 with probabilities 1/4, 1/2, 1/4: the 2.5 % and 97.5 %
    # quantiles are the two values themselves.
    low, high = bootstrap_mean_ci(np.array([1.0, 3.0]), method="percentile", n_resamples=4000)
    assert (low, high) == (pytest.approx(1.0), pytest.approx(3.0))
    assert bootstrap_mean_ci(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0)
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.array([1.0])))
    # reproducible
    d = np.array(DIFF)
    assert bootstrap_mean_ci(d, seed=3) == bootstrap_mean_ci(d, seed=3)


def test_study_table_strings() -> None:
    table = study_table(_runs(), n_resamples=2000)
    assert list(table.index)[0] == "nokd"
    assert table.loc["nokd", "AR@1"] == f"31.00 ± {np.std(NOKD, ddof=1):.2f}"
    assert table.loc["distilvpr", "ΔAR@1"] == "+3.00"
    assert table.loc["distilvpr", "seeds"] == 5
    assert table.loc["nokd", "ΔAR@1"] == ""
    one = study_table(pd.concat([_runs(), pd.DataFrame([{"variation": "single", "seed": 0, "status": "ok",
                                                          "test.AR@1": 40.0, "test.AR@5": 0, "test.AR@1%": 0}])]),
                      n_resamples=200)
    assert one.loc["single", "ΔAR@1"] == "+10.00"  # 40 - NOKD[0]
    assert (one.loc["single", "95% CI"], one.loc["single", "p (t)"], one.loc["single", "p (Wilcoxon)"]) == ("", "", "")


def test_choose_on_validation_compares_common_seeds_and_ignores_test() -> None:
    # distilvpr has 5 seeds, the sweep rows 3: the choice compares seeds 0-2 only. On all 5 seeds distilvpr's
    # validation mean is (40 + 44 + 42 + 80 + 80) / 5 = 57.2, but on the common seeds it is 42 < x10's 44; x10's
    # test recall is the worst of all, and the choice must not look at it.
    rows = []
    for variation, vals, test in (("distilvpr", [40, 44, 42, 80, 80], 50.0), ("distilvpr_x10", [43, 45, 44], 10.0),
                                  ("distilvpr_x0.1", [41, 41, 41], 90.0), ("nokd", [99, 99, 99, 99, 99], 1.0)):
        rows += [{"variation": variation, "param.seed": s, "status": "ok", "validation.AR@1": float(v),
                  "test.AR@1": test} for s, v in enumerate(vals)]
    rows.append({"variation": "distilvpr_x0.1", "param.seed": 3, "status": "failed", "validation.AR@1": 100.0})
    table = choose_on_validation(pd.DataFrame(rows))
    assert list(table.index) == ["distilvpr_x10", "distilvpr", "distilvpr_x0.1"]  # nokd is not a candidate
    assert table.loc["distilvpr", "val_AR@1 (common seeds)"] == pytest.approx(42.0)
    assert table.loc["distilvpr", "val_AR@1 (all seeds)"] == pytest.approx(57.2)
    assert table.loc["distilvpr_x0.1", "seeds"] == 3  # the failed run is ignored
    assert table["chosen"].tolist() == [True, False, False]
    assert table.attrs["common_seeds"] == [0, 1, 2]
    # the study CSV's column name works too, and no candidate gives an empty table
    csv = pd.DataFrame(rows).rename(columns={"param.seed": "seed", "validation.AR@1": "val_AR@1"})
    assert choose_on_validation(csv).index[0] == "distilvpr_x10"
    assert choose_on_validation(csv, prefix="kd").empty


def test_relation_auc_by_hand() -> None:
    x = np.array([[0.0], [1.0], [3.0]])
    pos = np.zeros((3, 3), bool)
    neg = np.ones((3, 3), bool)
    pos[0, 1] = pos[1, 0] = True  # distance 1, the negatives are at 2 and 3: perfectly separated
    assert relation_auc(x, pos, neg, relations=("euclidean",))["euclidean"] == pytest.approx(1.0)
    pos[:] = False
    pos[0, 2] = pos[2, 0] = True  # the positive pair is the farthest: AUC 0
    assert relation_auc(x, pos, neg, relations=("euclidean",))["euclidean"] == pytest.approx(0.0)
    # positives at distance 2 between negatives at 1 and 3 -> AUC 0.5
    x = np.array([[0.0], [1.0], [3.0]])
    pos[:] = False
    pos[1, 2] = pos[2, 1] = True
    assert relation_auc(x, pos, neg, relations=("euclidean",))["euclidean"] == pytest.approx(0.5)
    # cosine: directions, not lengths
    y = np.array([[1.0, 0.0], [5.0, 0.1], [0.0, 1.0]])
    pos[:] = False
    pos[0, 1] = pos[1, 0] = True
    out = relation_auc(y, pos, neg, relations=("cosine", "hyperbolic"))
    assert out["cosine"] == pytest.approx(1.0)
    assert 0.0 <= out["hyperbolic"] <= 1.0
    with pytest.raises(KeyError, match="unknown relations"):
        relation_auc(y, pos, neg, relations=("manhattan",))


def test_term_gradient_norms_by_hand() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    terms = {STUDENT_TASK_TERM: x.sum(), "square": (x ** 2).sum(), "constant": torch.tensor(1.0)}
    out = term_gradient_norms(terms, x)
    assert out[f"grad_norm/{STUDENT_TASK_TERM}"] == pytest.approx(2.0)  # ‖ones(2, 2)‖
    assert out["grad_norm/square"] == pytest.approx(2 * math.sqrt(30.0))  # ‖2x‖
    assert out["grad_ratio/square"] == pytest.approx(math.sqrt(30.0))
    assert out["grad_norm/constant"] == 0.0
    assert x.grad is None  # nothing accumulated into the parameters' gradients


def test_hyperbolic_clamp_share() -> None:
    small = torch.tensor([[0.1, 0.0], [0.0, 0.1], [-0.1, 0.0]])
    assert hyperbolic_clamp_share(small, 0.1) == 0.0
    # raw norm 100 at c = 0.1: expmap0 puts the points at tanh(31.6) ≈ 1 - 4e-28 of the radius, opposite
    # points are then at the artanh clamp
    big = torch.tensor([[100.0, 0.0], [-100.0, 0.0]])
    assert hyperbolic_clamp_share(big, 0.1) == 1.0


def _write_run(folder, seed: int, curve: list[float], norm: float) -> None:
    import json

    folder.mkdir(parents=True)
    epochs = [{"epoch": e + 1, "losses": {"triplet": 0.1}, "validation": {"AR@1": v},
               "stats": {"student_norm_mean": norm, "grad_ratio/rkdg_distance": 2.0 * (e + 1),
                         "mean_pos_dist": 0.1 * (e + 1), "mean_neg_dist": 0.2 * (e + 1), "active_fraction": 1.0}}
              for e, v in enumerate(curve)]
    (folder / "metrics.json").write_text(json.dumps({"seed": seed, "epochs": epochs}))


def test_epoch_and_diagnostics_tables(tmp_path) -> None:
    from distilvpr_lib.analysis.report import diagnostics_table, epoch_table

    _write_run(tmp_path / "nokd__seed0", 0, [10.0, 20.0, 30.0, 30.0], 4.0)
    _write_run(tmp_path / "nokd__seed1", 1, [12.0, 22.0, 32.0, 32.0], 6.0)
    _write_run(tmp_path / "distilvpr__seed0", 0, [20.0, 25.0, 24.0, 23.0], 1.0)
    (tmp_path / "unfinished__seed0").mkdir()
    epochs = epoch_table(tmp_path)
    assert len(epochs) == 12 and set(epochs["variation"]) == {"nokd", "distilvpr"}
    assert epochs.loc[(epochs.variation == "nokd") & (epochs.seed == 1) & (epochs.epoch == 3), "val_AR@1"].item() == 32.0
    diag = diagnostics_table(epochs, last_fraction=0.5)  # epochs 3-4
    assert diag.loc["nokd", "val_AR@1"] == pytest.approx(31.0)  # mean of 30, 30, 32, 32
    assert diag.loc["nokd", "val_AR@1 slope/epoch"] == pytest.approx(0.0)  # flat: converged
    assert diag.loc["distilvpr", "val_AR@1 slope/epoch"] == pytest.approx(-1.0)
    assert diag.loc["nokd", "student_norm_mean"] == pytest.approx(5.0)
    assert diag.loc["distilvpr", "grad_ratio/rkdg_distance"] == pytest.approx(7.0)  # mean of 6 and 8
    assert diag.loc["nokd", "epochs averaged"] == "3-4"
    # the triplet's spread: mined distances of epochs 3-4, the task term's loss
    assert diag.loc["nokd", "mean_pos_dist"] == pytest.approx(0.35) and diag.loc["nokd", "mean_neg_dist"] == pytest.approx(0.7)
    assert diag.loc["nokd", "loss.triplet"] == pytest.approx(0.1) and diag.loc["nokd", "active_fraction"] == 1.0


def test_study_runs_table_columns() -> None:
    from distilvpr_lib.analysis.run_records import STUDY_CSV_COLUMNS, study_runs_table

    runs = pd.DataFrame([{"variation": "nokd", "status": "ok", "param.seed": 1, "seed": 1, "best_epoch": 7,
                          "validation.AR@1": 40.0, "test.AR@1": 38.0, "test.AR@5": 60.0, "test.AR@1%": 38.0,
                          "loss_weights.triplet": 0.5, "embedding_norms.student.mean": 3.0},
                         {"variation": "nokd", "status": "failed", "param.seed": 2}])
    table = study_runs_table(runs)
    assert list(table.columns[: len(STUDY_CSV_COLUMNS)]) == list(STUDY_CSV_COLUMNS)
    assert len(table) == 1 and table.loc[0, "val_AR@1"] == 40.0 and table.loc[0, "w.triplet"] == 0.5
    assert table.loc[0, "student_norm"] == 3.0


def test_split_pair_masks_by_hand() -> None:
    from distilvpr_lib.analysis.relation_information import split_pair_masks

    class Bench:
        def database_sets(self, split):
            return [{0: {"northing": 0.0, "easting": 0.0}, 1: {"northing": 30.0, "easting": 0.0}},
                    {0: {"northing": 5.0, "easting": 0.0}, 1: {"northing": 100.0, "easting": 0.0}}]

    pos, neg = split_pair_masks(Bench(), "validation")
    # entries: 0 at 0 m, 1 at 30 m, 2 at 5 m, 3 at 100 m
    assert pos.tolist() == [[False, False, True, False], [False, False, False, False],
                            [True, False, False, False], [False, False, False, False]]
    assert neg[0].tolist() == [False, False, False, True] and neg[1, 3] and not neg[1, 2]
    _, near = split_pair_masks(Bench(), "validation", negative_band=(25.0, 100.0))  # (25, 100] m apart
    assert near.tolist() == [[False, True, False, True], [True, False, False, True],
                             [False, False, False, True], [True, True, True, False]]


def test_distill_from_one_head_dimension_free_terms_only() -> None:
    from distilvpr_lib.config import DistillConfig
    from distilvpr_lib.engine.runs.teacher_cache import cache_file_name
    from distilvpr_lib.losses.distiller import Distiller

    torch.manual_seed(0)
    student, cloud_head = torch.randn(8, 24), torch.randn(8, 6)
    self_only = Distiller(DistillConfig(method="self_only"))
    assert self_only.dimension_free
    terms = self_only(student, cloud_head)
    assert set(terms) == {"rkdg_distance", "rkdg_angle", "rkdg_geodesic"} and all(torch.isfinite(v) for v in terms.values())
    # the same relations in a padded copy of the head give the same loss (they only see the B x B relations)
    padded = torch.cat([cloud_head, torch.zeros(8, 18)], dim=1)
    assert float(self_only(student, padded)["rkdg_distance"]) == pytest.approx(float(terms["rkdg_distance"]), rel=1e-5)
    full = Distiller(DistillConfig(method="distilvpr"))
    assert not full.dimension_free
    with pytest.raises(ValueError, match="shapes differ"):
        full(student, cloud_head)
    assert cache_file_name(True, 7, "cloud_embedding") == "teacher_cache_cloud_embedding.pt"
    assert cache_file_name(True, 7) == "teacher_cache.pt"
    with pytest.raises(KeyError, match="unknown teacher head"):
        cache_file_name(True, 7, "fused")


def test_top1_by_run_pairs_by_hand() -> None:
    from distilvpr_lib.analysis.relation_information import top1_recall_by_run_pairs

    # two runs over the same three places (0, 100, 200 m); run 1's descriptor of place 100 m looks like place 200 m
    xy = np.array([[0.0, 0], [100, 0], [200, 0], [0, 0], [100, 0], [200, 0]])
    runs = np.array([0, 0, 0, 1, 1, 1])
    x = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0.1, 1], [0, 0, 1]])
    every = np.ones(6, bool)
    # run 0 -> run 1: place 0 hits, place 100 retrieves run 1's "100" (cos 0.0995 vs 0 for the others): hit,
    # place 200: cos 0.995 (run 1's "100") against 1.0 (run 1's 200 m entry): hit -> 3/3.
    # run 1 -> run 0: place 0 hits, place 100 (0, 0.1, 1) is closest to run 0's place 200: miss, place 200 hits -> 2/3
    assert top1_recall_by_run_pairs(x, xy, runs, every) == pytest.approx(100 * (3 / 3 + 2 / 3) / 2)
    only_middle = np.array([False, True, False, False, True, False])
    assert top1_recall_by_run_pairs(x, xy, runs, only_middle) == pytest.approx(100 * (1 + 0) / 2)
    # a query with no true neighbour in the other run does not count; a run pair with no such query is skipped
    lonely = np.array([[0.0, 0], [100, 0], [200, 0], [0, 0], [100, 0], [900, 0]])
    assert math.isnan(top1_recall_by_run_pairs(x, lonely, runs, np.array([False, False, True, False, False, True])))
    assert top1_recall_by_run_pairs(x, lonely, runs, np.array([False, True, True, False, True, True])) == \
        pytest.approx(100 * (1 + 0) / 2)


def test_relation_runs_and_their_mean_over_seeds(tmp_path) -> None:
    from distilvpr_lib.analysis.relation_information import mean_over_seeds, relation_run_dirs

    runs = pd.DataFrame({"variation": ["nokd", "nokd", "nokd", "kd", "kd"], "status": ["ok", "ok", "failed", "ok", "ok"],
                         "param.seed": [1, 0, 2, 0, 3], "run": ["n1", "n0", "n2", "k0", "k3"]})
    for run in ("n1", "n0", "n2", "k0"):  # k3 is known only from a recorded CSV: no folder, not scored
        (tmp_path / run).mkdir()
    assert relation_run_dirs(runs, tmp_path, ["nokd", "absent"]) == {"nokd": tmp_path / "n0"}
    every = relation_run_dirs(runs, tmp_path, ["nokd", "kd"], seeds=0)
    assert every == {"nokd seed0": tmp_path / "n0", "nokd seed1": tmp_path / "n1", "kd seed0": tmp_path / "k0"}
    table = pd.DataFrame({"cosine": [0.9, 0.8, 0.6, 0.7], "AR@1_seen": [60.0, 70.0, 50.0, 40.0],
                          "n_pairs+": [5, 5, 5, 5]},
                         index=["teacher fused", "nokd seed0", "nokd seed1", "kd seed0"])
    summary = mean_over_seeds(table)
    assert list(summary.index) == ["teacher fused", "nokd", "kd"]
    assert summary.loc["nokd", "cosine"] == pytest.approx(0.7) and summary.loc["nokd", "seeds"] == 2
    assert summary.loc["nokd", "AR@1_seen std"] == pytest.approx(np.std([70.0, 50.0], ddof=1))
    assert math.isnan(summary.loc["kd", "cosine std"]) and "n_pairs+" not in summary


def test_recorded_runs_round_trip_and_merge(tmp_path) -> None:
    from distilvpr_lib.analysis.run_records import read_recorded_runs, study_runs_table, with_recorded_runs
    from distilvpr_lib.errors import DataFormatError, MissingDataError

    def row(variation: str, seed: int, test: float) -> dict:
        return {"run": f"{variation}__seed{seed}", "variation": variation, "status": "ok", "param.seed": seed,
                "best_epoch": 32, "validation.AR@1": test + 1, "test.AR@1": test, "test.AR@5": test + 10,
                "test.AR@1%": test + 5, "loss_weights.triplet": 1.0}

    # the record: nokd seeds 0, 1 and distilvpr seed 0 (an old number for it)
    recorded = pd.DataFrame([row("nokd", 0, 30.0), row("nokd", 1, 32.0), row("distilvpr", 0, 1.0)])
    csv = tmp_path / "study_runs.csv"
    study_runs_table(recorded).to_csv(csv, index=False)
    back = read_recorded_runs(csv)
    assert list(back["run"]) == ["distilvpr__seed0", "nokd__seed0", "nokd__seed1"]
    assert back.loc[1, "test.AR@1"] == 30.0 and back.loc[1, "validation.AR@1"] == 31.0
    assert back.loc[1, "loss_weights.triplet"] == 1.0 and (back.status == "ok").all()
    # the batch folder re-made distilvpr seeds 0 and 1: its seed 0 wins over the record, the nokd rows are kept
    here = pd.DataFrame([row("distilvpr", 0, 33.0), row("distilvpr", 1, 34.0)])
    merged = with_recorded_runs(here, back)
    assert sorted(merged["run"]) == ["distilvpr__seed0", "distilvpr__seed1", "nokd__seed0", "nokd__seed1"]
    assert list(merged.loc[merged.run == "distilvpr__seed0", "test.AR@1"]) == [33.0]
    assert list(merged.source == "batch") == [True, True, False, False]
    pair = paired_statistics(merged, baseline="nokd", n_resamples=200).loc["distilvpr"]
    assert pair["n_pairs"] == 2 and pair["delta"] == pytest.approx(((33 - 30) + (34 - 32)) / 2)

    with pytest.raises(MissingDataError, match="absent.csv"):
        read_recorded_runs(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("variation,seed\nnokd,0\n")
    with pytest.raises(DataFormatError, match=r"bad\.csv.*missing column"):
        read_recorded_runs(bad)


def _teacher_row(variation: str, seed: int, teacher_norm: float) -> dict:
    """A finished batch row whose teacher embedding norm (the setup's fingerprint) is ``teacher_norm``."""
    return {"run": f"{variation}__seed{seed}", "variation": variation, "status": "ok", "param.seed": seed,
            "best_epoch": 16, "validation.AR@1": 40.0, "test.AR@1": 39.0, "test.AR@5": 50.0,
            "test.AR@1%": 45.0, "embedding_norms.teacher.mean": teacher_norm}


def test_recorded_runs_from_another_teacher_are_refused(tmp_path) -> None:
    """Seeds pair only within one setup: a record made with another teacher (its embedding norm, a fingerprint
    of the teacher, differs) must not be merged with the batch's runs."""
    from distilvpr_lib.analysis.run_records import read_recorded_runs, study_runs_table, with_recorded_runs
    from distilvpr_lib.errors import DataFormatError

    csv = tmp_path / "study_runs.csv"
    study_runs_table(pd.DataFrame([_teacher_row("nokd", 0, 11.508722305297852)])).to_csv(csv, index=False)
    recorded = read_recorded_runs(csv)
    same = with_recorded_runs(pd.DataFrame([_teacher_row("rkd", 0, 11.508722305297852)]), recorded)
    assert sorted(same["run"]) == ["nokd__seed0", "rkd__seed0"]
    with pytest.raises(DataFormatError, match=r"study_runs\.csv.*another teacher.*11\.5087.*11\.4"):
        with_recorded_runs(pd.DataFrame([_teacher_row("rkd", 0, 11.4)]), recorded)


def test_recorded_runs_distilling_from_another_head_are_not_refused(tmp_path) -> None:
    """A variation distilling from the cloud head records that head's norm (8.06 in the study where the fused
    descriptor's is 11.51): same setup, so it merges; the check compares norms variation by variation."""
    from distilvpr_lib.analysis.run_records import read_recorded_runs, study_runs_table, with_recorded_runs
    from distilvpr_lib.errors import DataFormatError

    csv = tmp_path / "study_runs.csv"
    study_runs_table(pd.DataFrame([_teacher_row("nokd", 0, 11.5087), _teacher_row("cloud_self_norm", 0, 8.0575)])).to_csv(
        csv, index=False)
    recorded = read_recorded_runs(csv)
    # the batch re-makes the cloud-head run first, then only fused-teacher runs: both merge
    for batch in ([_teacher_row("cloud_self_norm", 1, 8.0575), _teacher_row("nokd", 1, 11.5087)], [_teacher_row("rkd_norm", 0, 11.5087)]):
        merged = with_recorded_runs(pd.DataFrame(batch), recorded)
        assert {"nokd__seed0", "cloud_self_norm__seed0"} <= set(merged["run"])
    # another setup: refused whether or not a variation is on both sides, naming the variation when it is
    with pytest.raises(DataFormatError, match=r"another teacher \(teacher_norm 8\.0575 for cloud_self_norm.*8\.5"):
        with_recorded_runs(pd.DataFrame([_teacher_row("cloud_self_norm", 1, 8.5), _teacher_row("nokd", 1, 12.17)]), recorded)
    with pytest.raises(DataFormatError, match=r"another teacher \(teacher_norm 8\.0575; .*12\.17"):
        with_recorded_runs(pd.DataFrame([_teacher_row("rkd_norm", 0, 12.17)]), recorded)
