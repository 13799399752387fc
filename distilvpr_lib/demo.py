"""``make demo``: the whole workbook end to end, headless, through papermill.

Steps (profile ``cpu`` by default, ``smoke`` with ``SMOKE=1``):

1. generate the dataset into ``data/<profile>`` if it is not complete yet;
2. notebook 01 (data exploration);
3. notebook 02 (teacher training) into ``teacher_weights/<profile>``;
4. notebook 03 as a papermill batch (``ablations/demo.yaml``): no-KD and full DistilVPR students x 3 seeds;
5. notebook 04 (ablation analysis) on that batch;
6. notebook 05 (retrieval browser) rendering a fixed list of queries for teacher / no-KD / DistilVPR;
7. ``runs/demo-<profile>/report.md`` listing the key tables and figure paths.

Every executed notebook, figure and metrics file lands under ``runs/demo-<profile>/``. Steps whose
metrics already exist are skipped, so an interrupted demo resumes where it stopped.

Usage: ``python -m distilvpr_lib.demo [--profile cpu|smoke] [--out runs]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from distilvpr_lib.batch import Grid, execute_notebook, run_batch, run_is_complete
from distilvpr_lib.paths import project_path


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def _run_notebook(name: str, run_dir: Path, parameters: dict[str, Any]) -> None:
    if run_is_complete(run_dir):
        print(f"    already done: {run_dir}")
        return
    outcome = execute_notebook(project_path(f"notebooks/{name}.ipynb"), run_dir, parameters)
    if outcome.status != "ok":
        raise SystemExit(f"demo step {name} failed: {outcome.error}\n  executed notebook: "
                         f"{run_dir / 'notebook.ipynb'}\n  status: {run_dir / 'status.json'}")
    print(f"    ok in {outcome.seconds:.0f} s -> {run_dir}")


def run_demo(profile: str = "cpu", out_root: str | Path = "runs", data_root: str | Path = "data",
             teacher_root: str | Path = "teacher_weights", ablation_grid: str | Path = "ablations/demo.yaml") -> Path:
    """Run the demo; returns the path of the written report.

    ``out_root``, ``data_root`` and ``teacher_root`` are command-line paths (relative to the current folder)
    and are handed to the notebooks absolute; ``ablation_grid`` is a project file (relative to the project root).
    """
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.synth import generate_dataset

    start = time.time()
    demo_dir = Path(out_root).resolve() / f"demo-{profile}"
    demo_dir.mkdir(parents=True, exist_ok=True)
    dataset = Path(data_root).resolve() / profile
    teacher = Path(teacher_root).resolve() / profile
    timings: dict[str, float] = {}

    t = _step(f"1/7 dataset ({profile} profile) -> {dataset}")
    generate_dataset(dataset, profile_config(profile).synth)  # completes or skips an existing dataset
    timings["dataset"] = time.time() - t

    common = {"dataset": str(dataset), "profile": profile}
    t = _step("2/7 notebook 01: data exploration")
    _run_notebook("01_data_exploration", demo_dir / "01_data_exploration", common)
    timings["01"] = time.time() - t

    t = _step(f"3/7 notebook 02: teacher training -> {teacher}")
    _run_notebook("02_teacher_training", demo_dir / "02_teacher_training", {**common, "teacher_dir": str(teacher)})
    timings["02"] = time.time() - t

    t = _step(f"4/7 notebook 03 as a papermill batch ({ablation_grid}): no-KD and DistilVPR students x seeds")
    grid = Grid.load(project_path(ablation_grid))
    grid.name = f"ablations-{profile}"
    grid.base.update({**common, "teacher": str(teacher)})
    if profile == "smoke":
        grid.seeds = grid.seeds[:2]
    summary = run_batch(grid, out_root=demo_dir)
    print(summary)
    if summary.n_failed:
        raise SystemExit(f"demo: {summary.n_failed} student run(s) failed; see {summary.batch_dir}/*/status.json")
    nokd_dir = summary.batch_dir / f"nokd__seed{grid.seeds[0]}"
    distil_dir = summary.batch_dir / f"distilvpr__seed{grid.seeds[0]}"
    timings["03 batch"] = time.time() - t

    t = _step("5/7 notebook 04: ablation analysis")
    _run_notebook("04_ablation_analysis", demo_dir / "04_ablation_analysis", {"batch": str(summary.batch_dir)})
    timings["04"] = time.time() - t

    t = _step("6/7 notebook 05: retrieval browser (static renders)")
    _run_notebook("05_retrieval_browser", demo_dir / "05_retrieval_browser",
                  {"dataset": str(dataset), "models": {"teacher": str(teacher), "no-KD student": str(nokd_dir),
                                        "DistilVPR student": str(distil_dir)}})
    timings["05"] = time.time() - t

    _step("7/7 report")
    timings["total"] = time.time() - start
    report = write_report(demo_dir, teacher, nokd_dir, distil_dir, summary.batch_dir, timings)
    print(f"report: {report}  (total {timings['total'] / 60:.1f} min)")
    return report


def write_report(demo_dir: Path, teacher: Path, nokd_dir: Path, distil_dir: Path, batch_dir: Path,
                 timings: dict[str, float]) -> Path:
    """Write ``report.md`` with the key tables and the paths of every figure."""
    from distilvpr_lib.data.files import atomic_write
    from distilvpr_lib.engine.report import comparison_table

    table = comparison_table({"teacher": teacher, "no-KD student": nokd_dir, "DistilVPR student": distil_dir})
    ablation_csv = demo_dir / "04_ablation_analysis" / "ablation_table.csv"
    lines = [f"# DistilVPR demo report ({demo_dir.name})", "",
             "## Test split (epoch selected on validation)", "", table.round(2).to_markdown(), ""]
    if ablation_csv.is_file():
        import pandas as pd

        lines += ["## No-KD vs DistilVPR students, mean ± std over seeds (test split)", "",
                  pd.read_csv(ablation_csv, index_col=0).to_markdown(), ""]
    study_csv = demo_dir / "04_ablation_analysis" / "study_table.csv"
    if study_csv.is_file():
        import pandas as pd

        lines += ["## The same, paired by seed (Δ to no-KD, 95 % bootstrap interval, t and Wilcoxon p)", "",
                  pd.read_csv(study_csv, index_col=0).fillna("").to_markdown(), "",
                  "This is a reduced run of the question (few seeds, a small undertrained setting). The full "
                  "study — profile `study`, a visual prior, a stronger teacher, >= 5 seeds, diagnostics — is "
                  "`make study` (README, section \"Study\").", ""]
    executed = step_seconds(demo_dir)
    lines += ["## Timings", "", "Wall time of this invocation of the demo (steps already done were skipped):", "",
              *[f"- {k}: {v:.0f} s" for k, v in timings.items()], "",
              f"Execution time of each notebook run (from its status.json; sum {sum(executed.values()) / 60:.1f} min):",
              "", *[f"- {k}: {v:.0f} s" for k, v in executed.items()], "", "## Figures", ""]
    for png in sorted(demo_dir.rglob("*.png")) + sorted(teacher.glob("*.png")):
        lines.append(f"- {png}")
    report = demo_dir / "report.md"
    with atomic_write(report, mode="w") as fh:
        fh.write("\n".join(lines) + "\n")
    with atomic_write(demo_dir / "timings.json", mode="w") as fh:
        json.dump(timings, fh, indent=2)
    return report


def step_seconds(demo_dir: Path) -> dict[str, float]:
    """Execution time of every notebook run of the demo, from their ``status.json`` (survives resumes)."""
    out = {}
    for status in sorted(demo_dir.rglob("status.json")):
        record = json.loads(status.read_text())
        if record.get("status") == "ok" and record.get("seconds") is not None:
            out[str(status.parent.relative_to(demo_dir))] = float(record["seconds"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distilvpr_lib.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="cpu", choices=["smoke", "cpu", "paper"])
    parser.add_argument("--out", default="runs")
    args = parser.parse_args(argv)
    run_demo(args.profile, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
