"""The benchmark runner (distilvpr_lib.benchmark, analysis.benchmark_records; docs/benchmark/PROTOCOL.md): the spec
loader's refusals, the tuning names, the §4 choice with its ties, the §8 fingerprint refusal, the README check,
and one smoke-size run of every stage end to end (marked slow)."""

from __future__ import annotations

import dataclasses
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from distilvpr_lib import benchmark as bench
from distilvpr_lib.analysis.benchmark_records import (
    FINGERPRINT_COLUMNS,
    NO_ROWS_ANSWER,
    RUN_COLUMNS,
    FingerprintMismatchError,
    check_fingerprints,
    choose_configuration,
    choose_from_table,
    comparison_table,
    last_quarter_gain,
)
from distilvpr_lib.cli import main

REPO = Path(__file__).resolve().parents[1]
SPEC = REPO / "ablations" / "benchmark.yaml"
SMOKE_SPEC = REPO / "ablations" / "benchmark_smoke.yaml"


def _spec_variant(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(SPEC.read_text())
    edit(raw)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


# ---------------------------------------------------------------------------
# The spec
# ---------------------------------------------------------------------------
def test_the_real_spec_reads_as_the_protocol_says() -> None:
    spec = bench.load_spec(SPEC)
    assert [w.name for w in spec.worlds] == ["oxford", "boreas"]
    assert [w.paper_preset for w in spec.worlds] == ["distilvpr", "distilvpr_boreas"]
    assert spec.schedule == (32, (24,)) and spec.teacher_epochs == 10 and spec.teacher_milestones == (8,)
    assert spec.tuning_world == "oxford" and spec.tuning_seed == 100 and spec.seeds == (0, 1, 2, 3, 4)
    assert spec.rows == ("nokd", "distilvpr_paper", "distilvpr", "kd", "rkd", "pkt", "sp", "cc")
    assert spec.profile == "study" and spec.workers == 2 and spec.machine == "cpu-native-bf16"
    rows, baseline, tuned, versus = spec.rows, spec.baseline, spec.tuned, spec.versus
    from distilvpr_lib.analysis.benchmark_records import comparison_pairs

    assert len(comparison_pairs(rows, baseline, tuned, versus)) * len(spec.worlds) == 26  # PROTOCOL §7


def _unknown_top(raw):
    raw["epochs"] = 3


def _missing_section_key(raw):
    del raw["tuning"]["seed"]


def _bad_layout(raw):
    raw["worlds"][1]["layout"] = "kitti"


def _seed_overlap(raw):
    raw["tuning"]["seed"] = 3


def _unknown_preset(raw):
    raw["tuning"]["kd_methods"].append("no_such_loss")


def _untuned_row(raw):
    raw["final"]["rows"].append("csd")


def _versus_not_a_row(raw):
    raw["statistics"]["versus"].append("mkd")


def _milestone_late(raw):
    raw["student"]["milestones"] = [40]


def _unknown_world(raw):
    raw["tuning"]["world"] = "kitti"


def _synth_elsewhere(raw):
    raw["worlds"][0]["synth"] = ["--profile", "study", "--out", "data/elsewhere"]


def _bad_task(raw):
    raw["tuning"]["tasks"] = ["raw", "cosine"]


def _bad_scale(raw):
    raw["tuning"]["weight_scales"] = [0, 1, 10]


@pytest.mark.parametrize("edit, key", [
    (_unknown_top, "epochs"), (_missing_section_key, "tuning.seed"), (_bad_layout, "worlds[1].layout"),
    (_seed_overlap, "tuning.seed"), (_unknown_preset, "tuning.kd_methods[6]"), (_untuned_row, "final.rows[8]"),
    (_versus_not_a_row, "statistics.versus[6]"), (_milestone_late, "student.milestones"),
    (_unknown_world, "tuning.world"), (_synth_elsewhere, "worlds[0].synth"), (_bad_task, "tuning.tasks"),
    (_bad_scale, "tuning.weight_scales[0]"),
])
def test_a_bad_spec_is_refused_naming_file_and_key(tmp_path: Path, edit, key: str) -> None:
    path = _spec_variant(tmp_path, edit)
    with pytest.raises(bench.BenchmarkSpecError) as err:
        bench.load_spec(path)
    message = str(err.value)
    assert message.startswith(f"{path}: key '{key}': ") and "\n" not in message, message


def test_a_bad_spec_exits_2_with_one_line_and_writes_nothing(tmp_path: Path, capsys, monkeypatch) -> None:
    path = _spec_variant(tmp_path, _seed_overlap)
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(tmp_path))
    before = sorted(tmp_path.rglob("*"))
    assert main(["benchmark", "run", str(path), "--stage", "setup"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: key 'tuning.seed'"), err
    assert sorted(tmp_path.rglob("*")) == before
    assert main(["benchmark", "plan", str(tmp_path / "absent.yaml")]) == 2


# ---------------------------------------------------------------------------
# Tuning names
# ---------------------------------------------------------------------------
def test_tuning_names_are_six_per_method_by_the_grammar() -> None:
    from distilvpr_lib.config import apply_overrides, profile_config

    spec = bench.load_spec(SPEC)
    configs = bench.tuning_configs(spec)
    names = [c.config for c in configs]
    assert len(names) == 42 and len(set(names)) == 42
    per_method = {}
    for c in configs:
        per_method.setdefault(c.method, []).append(c.config)
    assert list(per_method) == ["nokd", "distilvpr", "kd", "rkd", "pkt", "sp", "cc"]
    assert all(len(v) == 6 for v in per_method.values())
    assert per_method["rkd"] == ["rkd_x0.1", "rkd", "rkd_x10", "rkd_x0.1_norm", "rkd_norm", "rkd_x10_norm"]
    assert per_method["nokd"] == ["nokd_lr0.5", "nokd", "nokd_lr2", "nokd_lr0.5_norm", "nokd_norm", "nokd_lr2_norm"]
    study = profile_config("study")
    cfg = apply_overrides(study, {"distill.method": "nokd_lr2_norm"})
    assert cfg.train.task_normalize and cfg.train.image_lr == pytest.approx(2 * study.train.image_lr)
    # the grid cells carry the names as the notebook's method parameter, one cell per name
    grid = bench.tune_grid(spec, REPO, {"teacher_folder": "/t", "prior_weights": "/p.pth"})
    assert [r.name for r in grid.runs()] == [f"{n}__seed100" for n in names]
    assert {r.parameters["method"] for r in grid.runs()} == set(names)
    assert all(r.parameters["overrides"]["train.milestones"] == [24] and r.parameters["epochs"] == 32
               for r in grid.runs())


# ---------------------------------------------------------------------------
# §4: the choice, ties included; §5: the last-quarter gain
# ---------------------------------------------------------------------------
def test_choice_rule_with_ties_on_a_hand_made_csv(tmp_path: Path) -> None:
    csv = tmp_path / "tuning.csv"
    csv.write_text(
        "method,config,weight_scale,lr_scale,task,val_ar1\n"
        # clear winner at alpha 10 (0.02 above the next: not a tie)
        "rkd,rkd_x0.1,0.1,1,raw,40.00\nrkd,rkd,1,1,raw,49.98\nrkd,rkd_x10,10,1,raw,50.00\n"
        # alpha 0.1 best by 0.01 exactly: a tie, which goes to alpha 1 (on the normalised task)
        "kd,kd_x0.1,0.1,1,raw,60.00\nkd,kd,1,1,raw,55.00\nkd,kd_norm,1,1,norm,59.99\n"
        # alpha 1 on both tasks within the tie: the raw task
        "pkt,pkt,1,1,raw,70.00\npkt,pkt_norm,1,1,norm,70.01\npkt,pkt_x10,10,1,raw,65.00\n"
        # no alpha 1 in the tie: the raw task, then the higher value
        "sp,sp_x0.1_norm,0.1,1,norm,80.01\nsp,sp_x10,10,1,raw,80.00\nsp,sp,1,1,raw,10.00\n"
        # no-KD: the scale is the learning-rate multiplier
        "nokd,nokd_lr0.5,1,0.5,raw,30.00\nnokd,nokd,1,1,raw,29.995\nnokd,nokd_lr2,1,2,raw,20.00\n")
    chosen = choose_from_table(pd.read_csv(csv), tie=0.01)
    assert chosen == {"rkd": "rkd_x10", "kd": "kd_norm", "pkt": "pkt", "sp": "sp_x10", "nokd": "nokd"}
    with pytest.raises(ValueError):
        choose_configuration([{"config": "a", "scale": 1, "task": "raw", "val_ar1": math.nan}])


def test_last_quarter_gain_by_hand() -> None:
    assert last_quarter_gain([1, 2, 3, 4, 5, 6, 7, 8]) == 2.0  # best at 8 (8) minus best at 6 (6)
    assert last_quarter_gain([10, 50, 40, 45]) == 0.0  # the best so far does not fall
    history = [float(e) for e in range(1, 33)]
    assert last_quarter_gain(history) == 8.0  # 32 epochs: epoch 32's best (32) minus epoch 24's (24)
    assert last_quarter_gain([None, 5.0, None, 7.0]) == 2.0
    assert math.isnan(last_quarter_gain([None, None, None, 3.0]))  # nothing validated before the last quarter


# ---------------------------------------------------------------------------
# Records: §8 fingerprints and §7 statistics, by hand
# ---------------------------------------------------------------------------
FINGERPRINTS = {"dataset_fingerprint": "d" * 64, "prior_sha256": "p" * 64, "teacher_sha256": "t" * 64,
                "code_commit": "c" * 40, "cpu_threads": 1, "torch_version": "2.5.1",
                "machine": "cpu AVX512 native-bf16 autocast=bfloat16"}


def _records(world: str, values: dict[str, list[float]], configs: dict[str, str] | None = None) -> pd.DataFrame:
    lines = []
    for row, ar1 in values.items():
        for seed, value in enumerate(ar1):
            lines.append({"world": world, "row": row, "config": (configs or {}).get(row, row), "seed": seed,
                          "selected_epoch": 30, "val_ar1": value + 1, "test_ar1": value, "test_ar5": value + 5,
                          "test_ar1pct": value + 10, "last_quarter_gain": 0.5, "flat": True, "wall_time_s": 100.0,
                          "weights_sha256": f"{row}{seed}", **FINGERPRINTS})
    return pd.DataFrame(lines, columns=list(RUN_COLUMNS))


def test_fingerprint_refusal() -> None:
    frame = _records("oxford", {"nokd": [10, 11, 12], "distilvpr": [12, 13, 14]})
    assert check_fingerprints(frame, "oxford_runs.csv")["teacher_sha256"] == "t" * 64
    for column in FINGERPRINT_COLUMNS:
        odd = frame.astype({column: object})
        odd.loc[2, column] = "other"
        with pytest.raises(FingerprintMismatchError, match=f"oxford_runs.csv: rows differ in {column}"):
            check_fingerprints(odd, "oxford_runs.csv")
    tuning = frame.copy()
    tuning["code_commit"] = "e" * 40  # the tuning rows may come from an earlier commit ...
    check_fingerprints(frame, "oxford_runs.csv", tuning)
    tuning["teacher_sha256"] = "x" * 64  # ... but not from another teacher
    with pytest.raises(FingerprintMismatchError, match="teacher_sha256"):
        check_fingerprints(frame, "oxford_runs.csv", tuning)


def test_comparisons_by_hand_and_holm_over_both_worlds() -> None:
    # Δ = (2, 2, 2, 2, 3): mean 2.2, sd sqrt(0.2); t interval 2.2 ± t_{.975,4} · sd / √5 (t_{.975,4} = 2.776445)
    oxford = _records("oxford", {"nokd": [10, 11, 12, 13, 14], "distilvpr": [12, 13, 14, 15, 17]})
    second = _records("second", {"nokd": [10, 11, 12, 13, 14], "distilvpr": [10, 12, 11, 14, 13]})
    table = comparison_table({"oxford": oxford, "second": second}, ["nokd", "distilvpr"], "nokd", "distilvpr", [],
                             n_resamples=200)
    assert list(table["world"]) == ["oxford", "second"] and list(table["family"]) == ["A", "A"]
    first = table.iloc[0]
    half = 2.776445105 * math.sqrt(0.2) / math.sqrt(5)
    assert first["delta"] == pytest.approx(2.2) and first["t_low"] == pytest.approx(2.2 - half, abs=1e-6)
    p = table["p_t"].to_numpy()
    order = sorted(range(2), key=lambda i: p[i])
    assert table["p_holm"][order[0]] == pytest.approx(min(1, 2 * p[order[0]]))
    assert table["p_holm"][order[1]] == pytest.approx(max(min(1, 2 * p[order[0]]), p[order[1]]))
    assert first["verdict"] == "beats" and table.iloc[1]["verdict"] == "no detectable difference"


# ---------------------------------------------------------------------------
# answer / --check README, and the refusal through the command line
# ---------------------------------------------------------------------------
def _tiny_project(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    """A project folder whose records hold the smoke spec's two worlds (5 hand-made seeds each)."""
    root = tmp_path / "project"
    (root / "ablations").mkdir(parents=True)
    spec_raw = yaml.safe_load(SMOKE_SPEC.read_text())
    spec_raw["final"]["seeds"] = [0, 1, 2, 3, 4]
    spec = root / "ablations" / "benchmark_smoke.yaml"
    spec.write_text(yaml.safe_dump(spec_raw, sort_keys=False))
    records = root / "docs" / "benchmark-smoke"
    records.mkdir(parents=True)
    configs = {"distilvpr": "distilvpr_x10", "distilvpr_paper": "distilvpr"}
    _records("oxford", {"nokd": [10, 11, 12, 13, 14], "distilvpr_paper": [9, 12, 12, 13, 15],
                        "distilvpr": [12, 13, 14, 15, 17]}, configs).to_csv(records / "oxford_runs.csv", index=False)
    configs["distilvpr_paper"] = "distilvpr_boreas"
    _records("second", {"nokd": [20, 21, 22, 23, 24], "distilvpr_paper": [20, 20, 23, 22, 25],
                        "distilvpr": [19, 20, 21, 22, 22]}, configs).to_csv(records / "second_runs.csv", index=False)
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))
    return root, spec


def test_answer_and_readme_check(tmp_path: Path, monkeypatch, capsys) -> None:
    root, spec = _tiny_project(tmp_path, monkeypatch)
    assert main(["benchmark", "answer", str(spec)]) == 0
    text = capsys.readouterr().out.strip()
    lines = text.split("\n\n")[0].splitlines()
    assert len(lines) == 10, text  # the ten-line answer, then the table
    assert lines[0].startswith("**Does DistilVPR beat no-KD and each KD baseline?**")
    assert "- **oxford**: DistilVPR tuned (`distilvpr_x10`): `distilvpr` beats `nokd` (Δ +2.20" in text
    assert "- **second**: DistilVPR tuned (`distilvpr_x10`): `distilvpr` is beaten by `nokd`" in text or \
           "- **second**: DistilVPR tuned (`distilvpr_x10`): `distilvpr` vs `nokd`: no detectable difference" in text
    assert "| oxford | `distilvpr` | `distilvpr_x10` | 14.20 ± 1.92 (5) | +2.20 |" in text
    readme = root / "README.md"
    readme.write_text(f"# x\n\n{bench.README_BEGIN}\n{text}\n{bench.README_END}\n\nmore\n")
    assert main(["benchmark", "answer", str(spec), "--check", str(readme)]) == 0
    records = root / "docs" / "benchmark-smoke" / "oxford_runs.csv"
    frame = pd.read_csv(records)
    frame["test_ar1"] = frame["test_ar1"].astype(float)
    frame.loc[0, "test_ar1"] = 10.5  # a row changes: the README's table no longer matches
    frame.to_csv(records, index=False)
    capsys.readouterr()
    assert main(["benchmark", "answer", str(spec), "--check", str(readme)]) == 1
    assert "differs" in capsys.readouterr().err
    readme.write_text("# no markers\n")
    assert main(["benchmark", "answer", str(spec), "--check", str(readme)]) == 1


def test_answer_without_rows_says_so(tmp_path: Path, monkeypatch, capsys) -> None:
    root, spec = _tiny_project(tmp_path, monkeypatch)
    shutil.rmtree(root / "docs")
    assert main(["benchmark", "answer", str(spec)]) == 0
    assert capsys.readouterr().out.strip() == NO_ROWS_ANSWER


def test_report_refuses_a_world_with_mixed_fingerprints(tmp_path: Path, monkeypatch, capsys) -> None:
    root, spec = _tiny_project(tmp_path, monkeypatch)
    path = root / "docs" / "benchmark-smoke" / "second_runs.csv"
    frame = pd.read_csv(path)
    frame.loc[3, "dataset_fingerprint"] = "e" * 64
    frame.to_csv(path, index=False)
    for argv in (["benchmark", "run", str(spec), "--stage", "report"], ["benchmark", "answer", str(spec)]):
        assert main(argv) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{path}: rows differ in dataset_fingerprint" in err[0], err
    assert not (root / "docs" / "benchmark-smoke" / "tables.md").exists()


def test_readme_block_matches_the_records() -> None:
    """The committed README's generated block is what `distilvpr benchmark answer` makes of the committed CSVs."""
    readme = REPO / "README.md"
    if bench.README_BEGIN not in readme.read_text():
        pytest.skip("the README has no benchmark block yet")
    assert bench.check_readme(bench.load_spec(SPEC), REPO, readme), \
        "README.md's benchmark block is stale: paste `distilvpr benchmark answer` between its markers"


@pytest.mark.slow
@pytest.mark.notebooks
def test_report_notebook_renders_the_records(tmp_path: Path, monkeypatch) -> None:
    """Notebook 06 over hand-made records: tables, comparisons and a forest plot per world and family, saved."""
    import subprocess
    import sys

    root, spec = _tiny_project(tmp_path, monkeypatch)
    out = tmp_path / "06"
    executed = tmp_path / "06.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(REPO / "notebooks" / "06_benchmark_report.ipynb"),
                           str(executed), "-p", "spec", str(spec), "-p", "out", str(out), "--cwd",
                           str(REPO / "notebooks"), "--no-progress-bar", "--log-level", "WARNING"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for world in ("oxford", "second"):
        for family in ("A", "B"):
            assert (out / f"forest_{world}_{family}.png").read_bytes().startswith(b"\x89PNG")
        rows = pd.read_csv(out / f"{world}_rows.csv")
        assert list(rows["row"]) == ["nokd", "distilvpr_paper", "distilvpr"]
    comparisons = pd.read_csv(out / "comparisons.csv")
    assert len(comparisons) == 6 and comparisons["p_holm"].notna().all()
    text = executed.read_text()
    assert "image/png" in text and "Does DistilVPR beat no-KD" in text


@pytest.mark.slow
def test_smoke_benchmark_end_to_end(tmp_path: Path, monkeypatch, capsys) -> None:
    """ablations/benchmark_smoke.yaml in a fresh project folder: setup -> tune -> choose -> final -> collect ->
    report -> answer, then a resumed run that skips everything, status, verify, and the fingerprint refusal."""
    import json

    root = tmp_path / "project"
    (root / "ablations").mkdir(parents=True)
    shutil.copy(SMOKE_SPEC, root / "ablations" / SMOKE_SPEC.name)
    (root / "notebooks").symlink_to(REPO / "notebooks", target_is_directory=True)
    (root / "pyproject.toml").write_text("")
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))
    monkeypatch.chdir(root)
    spec_path = "ablations/benchmark_smoke.yaml"
    assert main(["benchmark", "run", spec_path]) == 0
    out = capsys.readouterr().out
    assert "no shared place with the prior world: PASS" in out and "teacher gate FAIL" in out
    spec = bench.load_spec(root / spec_path)
    records = root / "docs" / "benchmark-smoke"
    for world in spec.worlds:
        setup = json.loads((root / "runs" / "bench-smoke" / world.name / "setup.json").read_text())
        assert setup["no_shared_place"]["shared"] == 0 and setup["teacher_gate"]["flagged"]
        assert all(len(setup["fingerprints"][k]) == 64 for k in ("dataset_fingerprint", "prior_sha256",
                                                                  "teacher_sha256"))
        assert json.loads((records / f"{world.name}_setup.json").read_text()) == setup
    tuning = pd.read_csv(records / "tuning.csv")
    assert sorted(tuning["config"]) == ["distilvpr", "distilvpr_x10", "nokd", "nokd_lr2"]
    chosen = yaml.safe_load((records / "chosen.yaml").read_text())
    assert chosen["methods"] == choose_from_table(tuning, spec.tie) and chosen["epochs"] == 2
    assert tuning.groupby("method")["chosen"].sum().to_dict() == {"distilvpr": 1, "nokd": 1}
    for world in spec.worlds:
        runs = pd.read_csv(records / f"{world.name}_runs.csv")
        assert len(runs) == 6 and list(runs.columns) == list(RUN_COLUMNS)
        assert set(runs.loc[runs["row"] == "distilvpr_paper", "config"]) == {world.paper_preset}
        assert set(runs.loc[runs["row"] == "distilvpr", "config"]) == {chosen["methods"]["distilvpr"]}
        assert runs[list(FINGERPRINT_COLUMNS)].nunique().max() == 1 and (runs["cpu_threads"] == 1).all()
        assert runs["test_ar1"].between(0, 100).all() and runs["selected_epoch"].isin([1, 2]).all()
    assert (records / "tables.md").is_file() and len(pd.read_csv(records / "comparisons.csv")) == 6
    # resumed: every cell is skipped; status says done; the answer comes from the records
    assert main(["benchmark", "run", spec_path, "--stage", "tune", "final", "collect"]) == 0
    assert "running 0" in capsys.readouterr().out
    assert main(["benchmark", "status", spec_path]) == 0
    status = capsys.readouterr().out
    assert "tune: done (done 4 of 4)" in status and "final/second: done (done 6 of 6)" in status
    assert main(["benchmark", "answer", spec_path]) == 0
    assert "- **oxford**: DistilVPR tuned" in capsys.readouterr().out
    # verify: a cell re-run from scratch in a temporary folder gives the recorded bytes
    assert main(["benchmark", "verify", spec_path, "oxford/nokd__seed0"]) == 0
    assert "[verify] oxford/nokd__seed0: equal" in capsys.readouterr().out
    # a row made with another teacher: the report refuses the world
    path = records / "second_runs.csv"
    frame = pd.read_csv(path)
    frame.loc[0, "teacher_sha256"] = "0" * 64
    frame.to_csv(path, index=False)
    assert main(["benchmark", "run", spec_path, "--stage", "report"]) == 1
    assert "rows differ in teacher_sha256" in capsys.readouterr().err


@pytest.mark.slow
def test_no_shared_place_check_at_smoke_size(smoke_dataset: Path) -> None:
    """PROTOCOL §2's check (engine.runs.prior.shared_places): a world against itself shares every place; the smoke
    prior world (seed 1000) shares none with the smoke world (seed 0) (the end-to-end test runs it in the setup)."""
    from distilvpr_lib.engine.runs.prior import dataset_locations, shared_places

    itself = shared_places(smoke_dataset, smoke_dataset)
    n = len(dataset_locations(smoke_dataset))
    assert itself == {"world_locations": n, "prior_locations": n, "radius_m": 10.0, "min_distance_m": 0.0,
                      "shared": n}
    assert shared_places(smoke_dataset, smoke_dataset, radius_m=0.0)["shared"] == n


def test_final_waits_for_the_choice_and_the_contingency(tmp_path: Path) -> None:
    """PROTOCOL §4-§5: no final run before chosen.yaml; none while the contingency is due and not applied; none
    with a choice made on another schedule."""
    spec = bench.load_spec(SPEC)
    with pytest.raises(bench.BenchmarkStateError, match="no configuration chosen yet"):
        bench.run_final(spec, tmp_path)
    chosen = tmp_path / "docs" / "benchmark" / "chosen.yaml"
    chosen.parent.mkdir(parents=True)
    chosen.write_text(yaml.safe_dump({"epochs": 32, "contingency_due": True, "methods": {}}))
    with pytest.raises(bench.BenchmarkStateError, match="contingency is due"):
        bench.run_final(spec, tmp_path)
    chosen.write_text(yaml.safe_dump({"epochs": 48, "contingency_due": False, "methods": {}}))
    with pytest.raises(bench.BenchmarkStateError, match="48-epoch tuning runs but the schedule is 32"):
        bench.run_final(spec, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["benchmark", "chosen.yaml", "docs"]  # nothing else
    applied = dataclasses.replace(spec, contingency_applied=True)
    assert applied.schedule == (48, (36,)) and bench.stage_dir(applied, "oxford", "final", tmp_path).name == "final-e48"


# ---------------------------------------------------------------------------
# PROTOCOL §5 "Machine": no row on a CPU without native bfloat16 kernels
# ---------------------------------------------------------------------------
def _machine(monkeypatch, native: bool, device: str = "cpu") -> None:
    import torch

    from distilvpr_lib.engine.train import devices

    monkeypatch.setattr(devices, "cpu_has_native_bfloat16", lambda: native)
    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device(device))


def test_machine_problem_follows_the_cpu_and_the_profile(tmp_path: Path, monkeypatch) -> None:
    spec = bench.load_spec(SPEC)  # study profile: bfloat16 autocast on the CPU
    _machine(monkeypatch, native=True)
    assert bench.machine_problem(spec) is None
    _machine(monkeypatch, native=False)
    assert "no native bfloat16 kernels" in bench.machine_problem(spec)
    _machine(monkeypatch, native=True, device="cuda")
    assert "would train on cuda" in bench.machine_problem(spec)
    _machine(monkeypatch, native=False)
    anywhere = bench.load_spec(_spec_variant(tmp_path, lambda raw: raw.pop("machine")))
    assert anywhere.machine == "any" and bench.machine_problem(anywhere) is None
    smoke = bench.load_spec(_spec_variant(tmp_path, lambda raw: raw.update(profile="smoke")))  # smoke: no autocast
    assert bench.machine_problem(smoke) is None
    with pytest.raises(bench.BenchmarkSpecError, match="key 'machine': unknown machine 'laptop'"):
        bench.load_spec(_spec_variant(tmp_path, lambda raw: raw.update(machine="laptop")))


def test_setup_refuses_a_cpu_without_bf16_before_writing_anything(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "project"
    (root / "ablations").mkdir(parents=True)
    shutil.copy(SPEC, root / "ablations" / "benchmark.yaml")
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))
    _machine(monkeypatch, native=False)
    assert main(["benchmark", "run", str(root / "ablations" / "benchmark.yaml"), "--stage", "setup"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "setup: this CPU" in err[0] and "no native bfloat16 kernels" in err[0], err
    assert sorted(p.name for p in root.iterdir()) == ["ablations"]  # no world generated, nothing written


def _trained_setup(root: Path) -> None:
    """The prior and both teachers of ablations/benchmark.yaml as finished folders (stand-in files) under ``root``."""
    prior = root / "teacher_weights" / "bench" / "prior"
    prior.mkdir(parents=True)
    (prior / "image_prior.pth").write_bytes(b"prior")
    (prior / "prior.json").write_text("{}")
    for world in ("oxford", "boreas"):
        teacher = root / "teacher_weights" / "bench" / world
        teacher.mkdir()
        (teacher / "teacher.pt").write_bytes(b"teacher")
        (teacher / "metrics.json").write_text('{"status": "complete"}')


def test_setup_refuses_an_unfinished_retry_teacher_on_a_cpu_without_bf16(tmp_path: Path, monkeypatch, capsys) -> None:
    root = tmp_path / "project"
    (root / "ablations").mkdir(parents=True)
    shutil.copy(SPEC, root / "ablations" / "benchmark.yaml")
    _trained_setup(root)
    retry = root / "teacher_weights" / "bench" / "boreas-retry"
    (retry / "checkpoints").mkdir(parents=True)  # a retrained teacher that stopped half-way: it still has to train
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(root))
    _machine(monkeypatch, native=False)
    assert main(["benchmark", "run", str(root / "ablations" / "benchmark.yaml"), "--stage", "setup"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "setup: this CPU" in err[0] and "no native bfloat16 kernels" in err[0], err
    assert sorted(p.name for p in root.iterdir()) == ["ablations", "teacher_weights"]  # no world generated


def test_setup_checks_the_machine_before_retraining_a_teacher_that_fails_its_gate(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    from distilvpr_lib.benchmark import stages
    from distilvpr_lib.data import fingerprint
    from distilvpr_lib.data.synth.skeleton import COMPLETE_FILE
    from distilvpr_lib.engine.runs import prior

    root = tmp_path / "project"
    _trained_setup(root)
    for world in ("oxford", "boreas"):
        (root / "data" / "bench" / world).mkdir(parents=True)
        (root / "data" / "bench" / world / COMPLETE_FILE).write_text("{}")
    commands: list[list[str]] = []
    monkeypatch.setattr(stages, "_cli", lambda root, args, log: commands.append(args))
    monkeypatch.setattr(stages, "_check_teacher_folder", lambda *args: None)
    monkeypatch.setattr(stages, "teacher_gate", lambda folder, dataset, gate_ar1: {
        "test_ar1": {"fused": 50.0}, "gate_ar1": gate_ar1, "passed": False})  # every teacher fails its gate
    monkeypatch.setattr(prior, "shared_places", lambda world, prior_world: {
        "shared": 0, "prior_locations": 1, "world_locations": 1, "radius_m": 10.0, "min_distance_m": 99.0})
    spec = bench.load_spec(SPEC)
    _machine(monkeypatch, native=False)
    with pytest.raises(bench.BenchmarkStateError, match="setup: this CPU .* no native bfloat16 kernels"):
        stages.run_setup(spec, root, log=lambda line: None)
    assert commands == [] and not (root / "teacher_weights" / "bench" / "oxford-retry").exists()
    _machine(monkeypatch, native=True)  # a machine that may: the retry teacher trains (2x the epochs), no refusal
    monkeypatch.setattr(stages, "file_sha256", lambda path: "0" * 64)  # the stand-in retry teachers hold no file
    monkeypatch.setattr(fingerprint, "dataset_fingerprint", lambda path: "0" * 64)
    records = stages.run_setup(spec, root, log=lambda line: None)
    assert [c[c.index("--out") + 1] for c in commands] == [
        str(root / "teacher_weights" / "bench" / f"{w}-retry") for w in ("oxford", "boreas")]
    assert all(c[c.index("--epochs") + 1] == "20" for c in commands)
    assert records["oxford"]["teacher_gate"]["retried"] and records["oxford"]["teacher_gate"]["flagged"]


def test_a_run_made_without_native_bf16_is_not_a_row() -> None:
    spec = bench.load_spec(SPEC)
    ok = {"device": "cpu", "autocast": "bfloat16", "cpu_capability": "AVX512", "native_bfloat16": True,
          "machine": "cpu AVX512 native-bf16 autocast=bfloat16"}
    assert bench.row_machine_problem(spec, ok) is None
    assert "without native bfloat16" in bench.row_machine_problem(
        spec, {**ok, "cpu_capability": "AVX2", "native_bfloat16": False, "machine": "cpu AVX2 autocast=bfloat16"})
    assert "not the CPU" in bench.row_machine_problem(spec, {"device": "cuda", "autocast": "bfloat16"})
    assert "does not record" in bench.row_machine_problem(spec, {})
    assert bench.row_machine_problem(dataclasses.replace(spec, machine="any"), {}) is None


def test_plan_prints_every_stage_and_whether_this_machine_may_make_rows(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("DISTILVPR_PROJECT_ROOT", str(tmp_path))  # nothing done there
    _machine(monkeypatch, native=False)
    assert main(["benchmark", "plan", str(SPEC)]) == 0
    out = capsys.readouterr().out
    assert "tune: 42 cells on oxford (seed 100), 0 done" in out and "122 student runs in all" in out
    assert "  nokd (6): nokd_lr0.5 nokd nokd_lr2 nokd_lr0.5_norm nokd_norm nokd_lr2_norm" in out
    assert "final/boreas: 40 cells (8 rows x seeds [0, 1, 2, 3, 4]), 0 done; distilvpr_paper = distilvpr_boreas" in out
    assert "machine: cpu-native-bf16; this machine may NOT make rows: this CPU" in out
    _machine(monkeypatch, native=True)
    assert main(["benchmark", "plan", str(SPEC)]) == 0
    assert "machine: cpu-native-bf16; this machine may make rows" in capsys.readouterr().out
