"""Bring your own loss through the benchmark (issue 27 item 9; docs/benchmark/RUNNING.md "Bring your own loss"):
a loss in the user's own file (DISTILVPR_LOSS_PLUGINS + register_preset), declared as an ``extra_rows:`` entry of
the user's own spec, tuned by the name grammar, chosen, run on the final seeds, collected and reported against
no-KD and the baselines in a family of its own (C, Holm apart) — leaving the protocol's spec, plan and verdicts
unchanged. The end-to-end run is at smoke size (one world, two seeds, one configuration per method; slow)."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from distilvpr_lib import benchmark as bench
from distilvpr_lib.analysis.benchmark_records import RUN_COLUMNS, comparison_table
from distilvpr_lib.analysis.benchmark_stats import paired_comparison
from distilvpr_lib.cli import main
from distilvpr_lib.losses import plugins
from distilvpr_lib.losses.distiller import PRESETS
from distilvpr_lib.losses.registry import LOSSES

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "ablations" / "benchmark.yaml"
SMOKE_SPEC = REPO / "ablations" / "benchmark_smoke.yaml"

#: The user's file: a toy loss (|mean(s) − mean(t)|² over the batch) and its preset, weight 1.
PLUGIN = textwrap.dedent('''
    """My own distillation loss (a toy): the batch means of student and teacher descriptors should agree."""
    from distilvpr_lib.losses.base import DistillLoss, check_pair
    from distilvpr_lib.losses.distiller import register_preset
    from distilvpr_lib.losses.registry import register_loss


    @register_loss("byo_gap")
    class BatchMeanGap(DistillLoss):
        def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
            check_pair(student, teacher, "byo_gap")
            return {"byo_gap": (student.mean(0) - teacher.detach().mean(0)).pow(2).sum()}


    register_preset("byo_gap", {"byo_gap": 1.0})
''')


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The user's plugin file, named by the environment variable; the registries are restored afterwards."""
    losses, presets, loaded = dict(LOSSES), dict(PRESETS), dict(plugins._LOADED)
    path = tmp_path / "my_loss.py"
    path.write_text(PLUGIN)
    monkeypatch.setenv(plugins.ENV_VAR, str(path))
    yield path
    for registry, saved in ((LOSSES, losses), (PRESETS, presets), (plugins._LOADED, loaded)):
        registry.clear()
        registry.update(saved)


def _with_extra(tmp_path: Path, source: Path, extra, edit=None) -> Path:
    raw = yaml.safe_load(source.read_text())
    if extra is not None:
        raw["extra_rows"] = extra
    if edit:
        edit(raw)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------
# The spec: the protocol's is unchanged; extra_rows is checked with one-line errors
# ---------------------------------------------------------------------------
def test_the_protocol_plan_is_unchanged(tmp_path: Path) -> None:
    """`distilvpr benchmark plan ablations/benchmark.yaml` says what PROTOCOL §4 and §6 fix (42 tuning cells, 8 rows
    x 5 seeds per world, 122 runs) and nothing of extra rows: the optional key leaves the protocol's plan alone."""
    spec = bench.load_spec(SPEC)
    assert spec.extra_rows == () and spec.all_rows == spec.rows
    lines = [line for line in bench.plan_lines(spec, tmp_path) if not line.startswith("machine: ")]  # this host's
    scales = {"nokd": ["nokd_lr0.5", "nokd", "nokd_lr2", "nokd_lr0.5_norm", "nokd_norm", "nokd_lr2_norm"]}
    for m in ("distilvpr", "kd", "rkd", "pkt", "sp", "cc"):
        scales[m] = [f"{m}_x0.1", m, f"{m}_x10", f"{m}_x0.1_norm", f"{m}_norm", f"{m}_x10_norm"]
    rows = ["nokd", "distilvpr_paper", "distilvpr", "kd", "rkd", "pkt", "sp", "cc"]
    cells = " ".join(f"{r}__seed{s}" for r in rows for s in range(5))
    records = tmp_path / "docs" / "benchmark"
    assert lines == [
        "benchmark bench (" + str(SPEC) + "; protocol docs/benchmark/PROTOCOL.md); students: study profile, 32 epochs, "
        "LR step after [24]; 2 runs side by side",
        "setup: prior (teacher_weights/bench/prior), worlds oxford, boreas (teachers: 10 epochs, step [8], gate fused "
        "AR@1 >= 85)",
        "tune: 42 cells on oxford (seed 100), 0 done",
        *[f"  {m} (6): {' '.join(names)}" for m, names in scales.items()],
        f"choose: -> {records / 'tuning.csv'}, {records / 'chosen.yaml'}",
        "final/oxford: 40 cells (8 rows x seeds [0, 1, 2, 3, 4]), 0 done; distilvpr_paper = distilvpr",
        f"  {cells}",
        "final/boreas: 40 cells (8 rows x seeds [0, 1, 2, 3, 4]), 0 done; distilvpr_paper = distilvpr_boreas",
        f"  {cells}",
        f"collect: -> {records / 'oxford_runs.csv'}, {records / 'boreas_runs.csv'}",
        f"report: -> {records / 'tables.md'}; 122 student runs in all",
    ]


def test_the_plan_command_runs(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(tmp_path))
    assert main(["benchmark", "plan", str(SPEC)]) == 0
    assert "122 student runs in all" in capsys.readouterr().out


def test_an_extra_row_is_tuned_run_and_planned(tmp_path: Path, plugin: Path) -> None:
    spec = bench.load_spec(_with_extra(tmp_path, SPEC, ["byo_gap"]))
    assert spec.extra_rows == ("byo_gap",) and spec.all_rows == (*spec.rows, "byo_gap")
    mine = [c.config for c in bench.tuning_configs(spec) if c.method == "byo_gap"]
    assert mine == ["byo_gap_x0.1", "byo_gap", "byo_gap_x10", "byo_gap_x0.1_norm", "byo_gap_norm", "byo_gap_x10_norm"]
    lines = bench.plan_lines(spec, tmp_path)
    assert f"  byo_gap [extra row] (6): {' '.join(mine)}" in lines
    assert "tune: 48 cells on oxford (seed 100), 0 done" in lines
    assert lines[-1].endswith("; 138 student runs in all")  # 48 + 9 rows x 5 seeds x 2 worlds
    chosen = {"nokd": "nokd", "distilvpr": "distilvpr", "kd": "kd", "rkd": "rkd", "pkt": "pkt", "sp": "sp",
              "cc": "cc", "byo_gap": "byo_gap_x10_norm"}
    grid = bench.final_grid(spec, tmp_path, spec.world("boreas"), chosen, {"teacher_folder": "/t",
                                                                          "prior_weights": "/p.pth"})
    runs = {r.name: r.parameters["method"] for r in grid.runs()}
    assert runs["byo_gap__seed3"] == "byo_gap_x10_norm" and runs["distilvpr_paper__seed0"] == "distilvpr_boreas"
    assert len(runs) == 45


def _modifier(raw):
    raw["extra_rows"] = ["byo_gap_x10"]


@pytest.mark.parametrize("extra, key, problem", [
    (["no_such_loss"], "extra_rows[0]", "unknown preset 'no_such_loss'"),
    (["byo_gap_x10"], "extra_rows[0]", "carries a modifier"),
    (["kd"], "extra_rows[0]", "already a row of the protocol"),
    (["nokd"], "extra_rows[0]", "already a row of the protocol"),
    (["byo_gap", "byo_gap"], "extra_rows", "duplicate entries"),
    ([], "extra_rows", "expected a non-empty list"),
    ("byo_gap", "extra_rows", "expected a non-empty list"),
])
def test_a_bad_extra_row_is_refused_in_one_line(tmp_path: Path, plugin: Path, extra, key: str, problem: str) -> None:
    path = _with_extra(tmp_path, SPEC, extra)
    with pytest.raises(bench.BenchmarkSpecError) as err:
        bench.load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: key '{key}': ") and problem in message and "\n" not in message, message


def test_without_the_plugin_the_spec_is_refused_before_anything_is_written(tmp_path: Path, capsys,
                                                                           monkeypatch) -> None:
    monkeypatch.delenv(plugins.ENV_VAR, raising=False)
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(tmp_path))
    path = _with_extra(tmp_path, SPEC, ["byo_gap_unregistered"])
    before = sorted(tmp_path.rglob("*"))
    assert main(["benchmark", "run", str(path), "--stage", "setup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}: key 'extra_rows[0]': unknown preset 'byo_gap_unregistered'" in err[0], err
    assert sorted(tmp_path.rglob("*")) == before
    monkeypatch.setenv(plugins.ENV_VAR, str(tmp_path / "missing_loss.py"))  # a plugin that is not there: exit 2
    assert main(["benchmark", "plan", str(path)]) == 2
    assert "missing_loss.py: loss plugin not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Statistics: family C is Holm-corrected apart; the protocol's families are untouched
# ---------------------------------------------------------------------------
FINGERPRINTS = {"dataset_fingerprint": "d" * 64, "prior_sha256": "p" * 64, "teacher_sha256": "t" * 64,
                "code_commit": "c" * 40, "cpu_threads": 1, "torch_version": "2.5.1",
                "machine": "cpu AVX512 native-bf16 autocast=bfloat16"}


def _records(world: str, values: dict[str, list[float]], configs: dict[str, str] | None = None) -> pd.DataFrame:
    lines = [{"world": world, "row": row, "config": (configs or {}).get(row, row), "seed": seed, "selected_epoch": 2,
              "val_ar1": v + 1, "test_ar1": v, "test_ar5": v + 5, "test_ar1pct": v + 10, "last_quarter_gain": 0.5,
              "flat": True, "wall_time_s": 10.0, "weights_sha256": f"{row}{seed}", **FINGERPRINTS}
             for row, ar1 in values.items() for seed, v in enumerate(ar1)]
    return pd.DataFrame(lines, columns=list(RUN_COLUMNS))


VALUES = {"nokd": [10, 11, 12, 13, 14], "distilvpr": [12, 13, 14, 15, 17], "kd": [11, 11, 13, 13, 15],
          "byo_gap": [13, 15, 14, 16, 18]}


def test_family_c_is_holm_corrected_apart_by_hand() -> None:
    frame = _records("oxford", VALUES)
    protocol = comparison_table({"oxford": frame}, ["nokd", "distilvpr", "kd"], "nokd", "distilvpr", ["kd"],
                                n_resamples=200)
    mine = comparison_table({"oxford": frame}, ["nokd", "distilvpr", "kd"], "nokd", "distilvpr", ["kd"],
                            n_resamples=200, extra=["byo_gap"])
    # the protocol's three comparisons keep their p-values and verdicts
    pd.testing.assert_frame_equal(mine[mine["family"] != "C"].reset_index(drop=True), protocol)
    c = mine[mine["family"] == "C"].reset_index(drop=True)
    assert list(zip(c["first"], c["second"])) == [("byo_gap", "nokd"), ("byo_gap", "distilvpr"), ("byo_gap", "kd")]
    # Δ by hand: byo − nokd = (3, 4, 2, 3, 4), mean 3.2; byo − distilvpr = (1, 2, 0, 1, 1), mean 1.0
    assert list(c["delta"]) == pytest.approx([3.2, 1.0, 2.6])
    p = [paired_comparison(VALUES["byo_gap"], VALUES[o], n_resamples=200)["p_t"] for o in ("nokd", "distilvpr", "kd")]
    order = sorted(range(3), key=lambda i: p[i])
    adjusted, running = [math.nan] * 3, 0.0
    for rank, i in enumerate(order):  # Holm over family C's own three p-values (m = 3)
        running = max(running, min(1.0, (3 - rank) * p[i]))
        adjusted[i] = running
    assert list(c["p_holm"]) == pytest.approx(adjusted)


def test_the_answer_tables_an_extra_row(tmp_path: Path, monkeypatch, plugin: Path, capsys) -> None:
    root = tmp_path / "project"
    (root / "ablations").mkdir(parents=True)
    spec = _with_extra(root / "ablations", SMOKE_SPEC, ["byo_gap"])
    records = root / "docs" / "benchmark-smoke"
    records.mkdir(parents=True)
    configs = {"distilvpr": "distilvpr_x10", "distilvpr_paper": "distilvpr", "byo_gap": "byo_gap_x10"}
    values = {"nokd": VALUES["nokd"], "distilvpr_paper": [9, 12, 12, 13, 15], "distilvpr": VALUES["distilvpr"],
              "byo_gap": VALUES["byo_gap"]}
    _records("oxford", values, configs).to_csv(records / "oxford_runs.csv", index=False)
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))
    assert main(["benchmark", "answer", str(spec)]) == 0
    text = capsys.readouterr().out.strip()
    assert "- **oxford**: your row (`byo_gap_x10`) (family C, Holm apart): `byo_gap` beats `nokd` (Δ +3.20" in text
    mine = next(line for line in text.splitlines() if line.startswith("- **oxford**: your row"))
    assert "against DistilVPR tuned and the baselines — " in mine and "`distilvpr`" in mine.split(" — ")[1] \
        and "`distilvpr_paper`" in mine.split(" — ")[1]
    assert "| oxford | `byo_gap` | `byo_gap_x10` | 15.20 ± 1.92 (5) | +3.20 |" in text
    assert "Holm over 3 testable comparisons" in text  # the protocol's family only (A: 2, B: 1); C is apart
    # the protocol's spec over the same records: its answer is the extra-row answer less the extra row's lines
    plain = bench.answer(bench.load_spec(_with_extra(tmp_path, SMOKE_SPEC, None)), root).strip()
    assert plain.splitlines() == [line for line in text.splitlines() if "byo_gap" not in line]


# ---------------------------------------------------------------------------
# End to end at smoke size: the user's own setup (one world), the protocol's stages, the user's row in the report
# ---------------------------------------------------------------------------
USER_SPEC = "ablations/my_benchmark.yaml"


def _user_spec(raw: dict) -> dict:
    """The smoke spec as a user shrinks it for their own run: one world, their own folders, one scale besides 1
    for the KD methods, seeds 0 and 1, and their loss as an extra row."""
    raw.update(name="my-bench", out="runs/my-bench", records="docs/my-bench", extra_rows=["byo_gap"])
    raw["prior"] = {"args": ["--profile", "smoke", "--dataset", "data/my-bench/prior", "--out",
                             "teacher_weights/my-bench/prior"],
                    "folder": "teacher_weights/my-bench/prior", "dataset": "data/my-bench/prior"}
    raw["worlds"] = [{"name": "oxford", "layout": "oxford", "synth": ["--profile", "smoke", "--out", "data/my-bench/oxford"],
                      "dataset": "data/my-bench/oxford", "teacher": "teacher_weights/my-bench/oxford",
                      "paper_preset": "distilvpr"}]
    raw["tuning"].update(weight_scales=[1, 10], nokd_lr_scales=[1], tasks=["raw"])
    raw["final"]["seeds"] = [0, 1]
    return raw


@pytest.fixture(scope="module")
def byo_project(tmp_path_factory: pytest.TempPathFactory):
    """A fresh project where a user runs their own loss through the benchmark (`distilvpr benchmark run`, every
    stage); yields ``(root, plugin file, printed output)`` with the environment still set."""
    import contextlib
    import io

    losses, presets, loaded = dict(LOSSES), dict(PRESETS), dict(plugins._LOADED)
    base = tmp_path_factory.mktemp("byo")
    plugin_file = base / "home" / "my_loss.py"  # the user's own file, outside the project and the package
    plugin_file.parent.mkdir()
    plugin_file.write_text(PLUGIN)
    root = base / "project"
    (root / "ablations").mkdir(parents=True)
    (root / "notebooks").symlink_to(REPO / "notebooks", target_is_directory=True)
    (root / "pyproject.toml").write_text("")
    (root / USER_SPEC).write_text(yaml.safe_dump(_user_spec(yaml.safe_load(SMOKE_SPEC.read_text())), sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(plugins.ENV_VAR, str(plugin_file))
        mp.setenv("DISTILVPR_PROJECT_ROOT", str(root))
        mp.chdir(root)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["benchmark", "plan", USER_SPEC]) == 0
            assert main(["benchmark", "run", USER_SPEC]) == 0
        yield root, plugin_file, printed.getvalue()
    for registry, saved in ((LOSSES, losses), (PRESETS, presets), (plugins._LOADED, loaded)):
        registry.clear()
        registry.update(saved)


@pytest.mark.slow
def test_bring_your_own_loss_through_the_benchmark(byo_project, capsys) -> None:
    import json

    from distilvpr_lib.analysis.benchmark_records import choose_from_table
    from distilvpr_lib.data.files import file_sha256

    root, plugin_file, printed = byo_project
    assert "  byo_gap [extra row] (2): byo_gap byo_gap_x10" in printed  # the plan: tuned by the grammar
    assert "final/oxford: 8 cells (4 rows x seeds [0, 1])" in printed
    records = root / "docs" / "my-bench"
    # tune + choose: the user's loss got the same budget as DistilVPR, chosen by the same rule
    tuning = pd.read_csv(records / "tuning.csv")
    assert list(tuning["config"]) == ["nokd", "distilvpr", "distilvpr_x10", "byo_gap", "byo_gap_x10"]
    chosen = yaml.safe_load((records / "chosen.yaml").read_text())["methods"]
    assert chosen == choose_from_table(tuning, 0.01) and chosen["byo_gap"] in {"byo_gap", "byo_gap_x10"}
    # final + collect: its rows ran its chosen configuration, with its loss term trained
    runs = pd.read_csv(records / "oxford_runs.csv")
    assert sorted(runs["row"].unique()) == ["byo_gap", "distilvpr", "distilvpr_paper", "nokd"] and len(runs) == 8
    assert set(runs.loc[runs["row"] == "byo_gap", "config"]) == {chosen["byo_gap"]}
    assert runs[["dataset_fingerprint", "teacher_sha256", "prior_sha256"]].nunique().max() == 1
    folder = root / "runs" / "my-bench" / "oxford" / "final" / "byo_gap__seed1"
    metrics = json.loads((folder / "metrics.json").read_text())
    assert json.loads((folder / "config.json").read_text())["distill"]["method"] == chosen["byo_gap"]
    assert metrics["final_losses"]["byo_gap"] > 0.0
    launches = json.loads((folder.parent / "launches.json").read_text())
    assert any(f"my_loss.py:{file_sha256(plugin_file)}" == x["loss_plugins"] for x in launches)
    # report: the user's row against no-KD, DistilVPR tuned and the baseline, family C, Holm apart
    comparisons = pd.read_csv(records / "comparisons.csv")
    mine = comparisons[comparisons["family"] == "C"]
    assert list(mine["second"]) == ["nokd", "distilvpr", "distilvpr_paper"] and (mine["n"] == 2).all()
    assert (records / "tables.md").read_text().count("`byo_gap`") >= 4  # its row and its three comparisons
    capsys.readouterr()
    assert main(["benchmark", "answer", USER_SPEC]) == 0
    answer = capsys.readouterr().out
    assert f"- **oxford**: your row (`{chosen['byo_gap']}`) (family C, Holm apart): `byo_gap`" in answer
    assert f"| oxford | `byo_gap` | `{chosen['byo_gap']}` |" in answer
    # the user edits their loss after the runs: its rows are refused until the file is restored (or re-run)
    text = plugin_file.read_text()
    plugin_file.write_text(text + "# tweaked\n")
    try:
        assert main(["benchmark", "run", USER_SPEC, "--stage", "collect"]) == 1
        assert "the loss plugins changed since this cell was launched" in capsys.readouterr().err
    finally:
        plugin_file.write_text(text)
    assert main(["benchmark", "run", USER_SPEC, "--stage", "collect"]) == 0


@pytest.mark.slow
@pytest.mark.notebooks
def test_make_benchmark_report_exports_a_smoke_benchmark(byo_project, tmp_path: Path) -> None:
    """`make benchmark-report` (notebook 06 -> nbconvert Markdown) over the smoke benchmark's records above, into
    tmp_path: the Markdown has the answer, the tables and every figure, linked relatively to files that exist."""
    import os
    import re
    import subprocess
    import sys

    import shutil

    root, plugin_file, _ = byo_project
    export, run, records = tmp_path / "export", tmp_path / "run", tmp_path / "records"
    shutil.copytree(root / "docs" / "my-bench", records)  # records elsewhere (BENCH_RECORDS), one row left out
    runs = pd.read_csv(records / "oxford_runs.csv")
    runs[~((runs["row"] == "byo_gap") & (runs["seed"] == 1))].to_csv(records / "oxford_runs.csv", index=False)
    venv = Path(sys.executable).parents[1]
    proc = subprocess.run(["make", "-s", "-o", "venv", "-C", str(REPO), "benchmark-report", f"VENV={venv}",
                           f"BENCH_SPEC={USER_SPEC}", f"BENCH_RECORDS={records}", f"REPORT_DIR={export}",
                           f"REPORT_RUN={run}"], capture_output=True, text=True,
                          env={**os.environ, "DISTILVPR_PROJECT_ROOT": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (export / "REPORT.md").read_text()
    assert "Does DistilVPR beat no-KD" in report
    mine = next(line for line in report.splitlines() if line.startswith("| oxford | `byo_gap` |"))
    assert "± n/a (1) |" in mine  # read from BENCH_RECORDS: seed 1 of the row is not there
    assert "<table" in report or "| row |" in report  # the per-row and comparison tables
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert len(figures) == 4, figures  # forest A, B, C and the validation curves
    for link in figures:
        assert not Path(link).is_absolute() and (export / link).read_bytes().startswith(b"\x89PNG"), link
    figures = {"forest_oxford_A.png", "forest_oxford_B.png", "forest_oxford_C.png", "validation_oxford.png"}
    assert {p.name for p in run.glob("*.png")} == figures
    import json

    summary = json.loads((run / "metrics.json").read_text())  # notebook 06's summary, as notebooks 01-05 write
    assert summary["rows"] == {"oxford": ["nokd", "distilvpr_paper", "distilvpr", "byo_gap"]}
    assert set(summary["figures"]) == figures
