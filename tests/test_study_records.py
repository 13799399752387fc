"""The committed study records: every README table must recompute from its per-run CSV.

``docs/study/**/study_runs.csv`` is the study's record (the run folders are not committed). These tests read
the committed files: each has the columns and names the study promises, holds one setup (one teacher), and
its ``study_table.csv`` (the README's table) is what :func:`distilvpr_lib.analysis.report.study_table` makes
from it today — so a change to the statistics that would silently change a published number fails here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from distilvpr_lib.analysis.report import study_table
from distilvpr_lib.analysis.run_records import STUDY_CSV_COLUMNS, read_recorded_runs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "study"
RECORDS = sorted(DOCS.glob("**/study_runs.csv"))


def test_the_study_records_are_committed() -> None:
    assert DOCS / "study_runs.csv" in RECORDS, "the 16-epoch study's per-run CSV is missing"
    assert len(RECORDS) >= 2


@pytest.mark.parametrize("csv", RECORDS, ids=lambda p: str(p.relative_to(DOCS)))
def test_a_record_has_the_promised_columns_and_names(csv: Path) -> None:
    runs = pd.read_csv(csv)
    assert list(runs.columns[: len(STUDY_CSV_COLUMNS)]) == list(STUDY_CSV_COLUMNS)
    assert not runs.duplicated(["variation", "seed"]).any(), "one row per (variation, seed)"
    assert "nokd" in set(runs["variation"]), "every study batch has its no-distillation baseline"
    for col in ("val_AR@1", "test_AR@1", "test_AR@5", "test_AR@1%"):
        assert runs[col].between(0, 100).all(), col
    # recall@5 can only add to recall@1 (same queries, same ranking)
    assert (runs["test_AR@5"] >= runs["test_AR@1"]).all()


@pytest.mark.parametrize("csv", RECORDS, ids=lambda p: str(p.relative_to(DOCS)))
def test_a_record_holds_one_setup(csv: Path) -> None:
    """Seeds pair only within one setup (data, prior, teacher); the teacher's embedding norm identifies it.

    Every variation records one teacher norm; all share the no-KD rows' (the fused descriptor's) except those
    distilling from the cloud head (``distill.teacher_head``), which record that head's.
    """
    runs = pd.read_csv(csv)
    per_variation = runs.groupby("variation")["teacher_norm"]
    assert (per_variation.max() - per_variation.min() <= 1e-5 * per_variation.max()).all()
    fused = per_variation.first().drop([v for v in per_variation.groups if "cloud" in v])
    assert np.allclose(fused, fused["nokd"], rtol=1e-5), fused.to_dict()


@pytest.mark.parametrize("csv", RECORDS, ids=lambda p: str(p.relative_to(DOCS)))
def test_the_committed_table_recomputes_from_its_record(csv: Path) -> None:
    committed = pd.read_csv(csv.with_name("study_table.csv"), index_col=0, dtype=str, keep_default_na=False)
    made = study_table(read_recorded_runs(csv)).astype(str)
    assert list(made.index) == list(committed.index)
    columns = list(committed.columns)  # an older table may lack a column added since (the 6-epoch one: val AR@1)
    assert set(columns) <= set(made.columns)
    pd.testing.assert_frame_equal(made[columns], committed, check_names=False)


def test_study_table_command_recomputes_a_committed_table(tmp_path, capsys) -> None:
    from distilvpr_lib.cli import main

    csv = DOCS / "long-b" / "study_runs.csv"
    out = tmp_path / "table.csv"
    assert main(["study-table", str(csv), "--csv", str(out)]) == 0
    committed = pd.read_csv(csv.with_name("study_table.csv"), index_col=0, dtype=str, keep_default_na=False)
    pd.testing.assert_frame_equal(pd.read_csv(out, index_col=0, dtype=str, keep_default_na=False), committed)
    printed = capsys.readouterr().out
    assert printed.splitlines()[2].startswith("| nokd ") and "[+4.80, +8.63]" in printed  # README Result 5, rkd_norm


def test_study_table_command_against_another_baseline(tmp_path, capsys) -> None:
    """Any variation of the record can be the baseline: the 16-epoch study's rows against nokd_norm."""
    from distilvpr_lib.cli import main

    assert main(["study-table", str(DOCS / "study_runs.csv"), "--baseline", "nokd_norm"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| nokd_norm ")
    # distilvpr_norm minus nokd_norm, per seed: +8.97, +12.37, +18.97, +8.41, +15.95 (README, Result 2)
    assert any(line.startswith("| distilvpr_norm ") and "12.93" in line for line in lines)


@pytest.mark.parametrize("case", ["missing baseline", "not a CSV", "absent"])
def test_study_table_command_errors_are_one_line(tmp_path, capsys, case: str) -> None:
    from distilvpr_lib.cli import main

    args = {"missing baseline": [str(DOCS / "study_runs.csv"), "--baseline", "nope"],
            "not a CSV": [str(DOCS / "study_table.md")],
            "absent": [str(tmp_path / "none.csv")]}[case]
    out = tmp_path / "never.csv"
    assert main(["study-table", *args, "--csv", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {args[0]}: ")
    assert not out.exists()
