"""The README is a front page: short, every page it links exists, no module cites it, and the study numbers it
quotes recompute from the committed per-run CSVs (docs/study/)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from distilvpr_lib.analysis.report import study_table
from distilvpr_lib.analysis.run_records import read_recorded_runs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_is_a_front_page():
    assert len(README.splitlines()) <= 200
    for heading in ("## Install", "## Two commands", "## The notebooks", "## Command line", "## Results",
                    "## When something is wrong", "## Scaling out"):
        assert heading in README, heading
    assert README.count("<!-- benchmark:begin -->") == 1 and README.count("<!-- benchmark:end -->") == 1


def test_every_linked_page_exists():
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert local
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing, missing


def test_no_module_cites_the_readme():
    offenders = []
    assert re.search(r"\(README\b|(?<![\w/])README,? [\"']|README section", '(README "Study")')  # the pattern bites
    for path in (ROOT / "distilvpr_lib").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            # the reference repository's README (its commands) and data/README.md are other files
            # a citation of the project's README as documentation ("(README, Study)", 'README "Study"'); other
            # READMEs (benchmarks/, data/, the reference repository's) and the generated answer block are fine
            if re.search(r"\(README\b|(?<![\w/])README,? [\"']|README section", line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _delta(csv: Path, variation: str) -> tuple[str, str]:
    table = study_table(read_recorded_runs(csv))
    row = table.loc[variation]
    return f"{float(row['ΔAR@1']):+.2f}", str(row["95% CI"])


@pytest.mark.parametrize("csv, variation, with_ci", [
    ("study_runs.csv", "distilvpr_norm", True),
    ("study_runs.csv", "rkd_norm", False),
    ("long-b/study_runs.csv", "rkd_norm", False),
    ("long-b/study_runs.csv", "distilvpr_norm_self1", False),
])
def test_the_study_numbers_quoted_recompute(csv, variation, with_ci):
    delta, ci = _delta(ROOT / "docs" / "study" / csv, variation)
    assert delta in README, (variation, delta)
    if with_ci:
        assert ci in README, (variation, ci)


def test_the_no_kd_level_and_the_preset_gap_recompute():
    base = study_table(read_recorded_runs(ROOT / "docs/study/study_runs.csv")).loc["nokd"]
    assert f"{float(str(base['AR@1']).split(' ')[0]):.1f} test AR@1 at 16 epochs" in README
    long = study_table(read_recorded_runs(ROOT / "docs/study/long/study_runs.csv"))
    gaps = sorted(-float(long.loc[v, "ΔAR@1"]) for v in ("distilvpr", "distilvpr_norm"))
    assert f"{gaps[0]:.1f}–{gaps[1]:.1f} below no-KD" in README
