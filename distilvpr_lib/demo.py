"""``make demo``: the whole workbook end to end, headless, through papermill.

Steps (profile ``cpu`` by default, ``smoke`` with ``SMOKE=1``):

1. generate the dataset into ``data/<world>`` if it is not complete yet (``<world>`` is the profile's name, or
   ``smoke-demo`` at ``smoke``: see :data:`distilvpr_lib.config.DEMO_CHANGES`);
2. notebook 01 (data exploration);
3. notebook 02 (teacher training) into ``teacher_weights/<world>``;
4. notebook 03 as a papermill batch (``ablations/demo.yaml``): no-KD, full DistilVPR and DistilVPR with the task
   loss on normalised embeddings (the study's choice), students x 3 seeds;
5. notebook 04 (ablation analysis) on that batch;
6. notebook 05 (retrieval browser) rendering a fixed list of queries for teacher / no-KD / DistilVPR;
7. the benchmark's story at a reduced size (:func:`demo_benchmark_spec`): ``ablations/benchmark_smoke.yaml`` cut to
   one world, one configuration per method and two seeds, run end to end by ``distilvpr benchmark run`` (setup with
   its teacher gate and "no shared place" check, tune, choose, final, collect, report), then notebook 06 over its
   records — at the smoke size whatever the profile (the real benchmark is ``make benchmark``: hours);
8. ``runs/demo-<profile>/report.md`` listing the key tables and figure paths.

Every executed notebook, figure and metrics file lands under ``runs/demo-<profile>/``. Steps whose
metrics already exist are skipped, so an interrupted demo resumes where it stopped.

Usage: ``python -m distilvpr_lib.demo [--profile cpu|smoke] [--out runs]``
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distilvpr_lib.batch import Grid, execute_notebook, run_batch, run_is_complete
from distilvpr_lib.paths import project_path

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import SynthConfig


def demo_changes(profile: str, section: str) -> dict[str, Any]:
    """The demo's changes of ``profile`` in one ``section`` (``synth`` | ``train`` | ``students``), from
    :data:`distilvpr_lib.config.DEMO_CHANGES`: ``{field: value}`` (empty when the profile's own are kept)."""
    from distilvpr_lib.config import DEMO_CHANGES

    prefix = f"{section}."
    return {key.removeprefix(prefix): copy.deepcopy(value) for key, value in DEMO_CHANGES.get(profile, {}).items()
            if key.startswith(prefix)}


def _teacher_parameters(profile: str) -> dict[str, Any]:
    """Notebook 02 parameters from the demo's ``train`` changes (none when the profile's own settings are kept):
    ``train.epochs`` as ``epochs``, the other fields as ``overrides``."""
    changes = demo_changes(profile, "train")
    parameters: dict[str, Any] = {}
    if "epochs" in changes:
        parameters["epochs"] = changes.pop("epochs")
    if changes:
        parameters["overrides"] = {f"train.{name}": value for name, value in changes.items()}
    return parameters


def _step(title: str) -> float:
    print(f"\n=== {title}", flush=True)
    return time.time()


def _run_notebook(name: str, run_dir: Path, parameters: dict[str, Any]) -> None:
    if run_is_complete(run_dir):
        print(f"    already done: {run_dir}")
        return
    # one thread per core whatever the caller's OMP_NUM_THREADS: the recalls depend on the thread count (float
    # sums split over threads round differently), so the demo fixes it, as run_batch does for the students
    outcome = execute_notebook(project_path(f"notebooks/{name}.ipynb"), run_dir, parameters,
                               threads=os.cpu_count() or 1)
    if outcome.status != "ok":
        raise SystemExit(f"demo step {name} failed: {outcome.error}\n  executed notebook: "
                         f"{run_dir / 'notebook.ipynb'}\n  status: {run_dir / 'status.json'}")
    print(f"    ok in {outcome.seconds:.0f} s -> {run_dir}")


@dataclass
class DemoPlan:
    """What the demo runs at one profile (:func:`plan_demo`); every setting that differs from the profile's comes
    from :data:`distilvpr_lib.config.DEMO_CHANGES`.

    Attributes:
        profile: the profile.
        world: the world's name: the profile's, or ``<profile>-demo`` when the demo changes its ``synth``.
        dataset: the dataset folder (absolute), ``<data_root>/<world>``.
        teacher: the teacher folder (absolute), ``<teacher_root>/<world>``.
        synth_changes: the demo's ``synth`` fields (``{field: value}``; empty: the profile's world).
        synth: the generator's settings of the world (the profile's with ``synth_changes``).
        teacher_parameters: notebook 02's parameters beyond ``dataset``, ``profile`` and ``teacher_dir``.
        grid: notebook 03's batch (``ablation_grid`` named ``ablations-<profile>``, its ``base`` the dataset, profile
            and teacher, its seeds cut to ``students.seeds``).
    """

    profile: str
    world: str
    dataset: Path
    teacher: Path
    synth_changes: dict[str, Any]
    synth: "SynthConfig"
    teacher_parameters: dict[str, Any]
    grid: Grid


def plan_demo(profile: str = "cpu", data_root: str | Path = "data", teacher_root: str | Path = "teacher_weights",
              ablation_grid: str | Path = "ablations/demo.yaml") -> DemoPlan:
    """The demo's plan at ``profile`` (see :class:`DemoPlan`); writes nothing.

    Raises:
        KeyError: unknown profile. GridError: ``ablation_grid`` unreadable.
    """
    from distilvpr_lib.config import apply_overrides, profile_config

    synth_changes = demo_changes(profile, "synth")
    world = f"{profile}-demo" if synth_changes else profile
    dataset = Path(data_root).resolve() / world
    teacher = Path(teacher_root).resolve() / world
    synth = apply_overrides(profile_config(profile), {f"synth.{k}": v for k, v in synth_changes.items()}).synth
    grid = Grid.load(project_path(ablation_grid))
    grid.name = f"ablations-{profile}"
    grid.base.update({"dataset": str(dataset), "profile": profile, "teacher": str(teacher)})
    n_seeds = demo_changes(profile, "students").get("seeds")
    if n_seeds is not None:
        grid.seeds = grid.seeds[:n_seeds]
    return DemoPlan(profile=profile, world=world, dataset=dataset, teacher=teacher, synth_changes=synth_changes,
                    synth=synth, teacher_parameters=_teacher_parameters(profile), grid=grid)


def run_demo(profile: str = "cpu", out_root: str | Path = "runs", data_root: str | Path = "data",
             teacher_root: str | Path = "teacher_weights", ablation_grid: str | Path = "ablations/demo.yaml") -> Path:
    """Run the demo; returns the path of the written report.

    ``out_root``, ``data_root`` and ``teacher_root`` are command-line paths (relative to the current folder)
    and are handed to the notebooks absolute; ``ablation_grid`` is a project file (relative to the project root).
    """
    from distilvpr_lib.data.synth import generate_dataset

    start = time.time()
    plan = plan_demo(profile, data_root, teacher_root, ablation_grid)
    dataset, teacher, synth_changes = plan.dataset, plan.teacher, plan.synth_changes
    demo_dir = Path(out_root).resolve() / f"demo-{profile}"
    demo_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t = _step(f"1/8 dataset ({profile} profile{', ' + str(synth_changes) if synth_changes else ''}) -> {dataset}")
    generate_dataset(dataset, plan.synth)  # completes or skips an existing dataset
    timings["dataset"] = time.time() - t

    common = {"dataset": str(dataset), "profile": profile}
    t = _step("2/8 notebook 01: data exploration")
    _run_notebook("01_data_exploration", demo_dir / "01_data_exploration", common)
    timings["01"] = time.time() - t

    t = _step(f"3/8 notebook 02: teacher training -> {teacher}")
    _run_notebook("02_teacher_training", demo_dir / "02_teacher_training",
                  {**common, "teacher_dir": str(teacher), **plan.teacher_parameters})
    timings["02"] = time.time() - t

    t = _step(f"4/8 notebook 03 as a papermill batch ({ablation_grid}): no-KD and DistilVPR students x seeds")
    grid = plan.grid
    summary = run_batch(grid, out_root=demo_dir)
    print(summary)
    if summary.signum is not None:
        raise SystemExit(128 + summary.signum)  # stopped by Ctrl-C / SIGTERM: re-running the demo resumes
    if summary.n_failed or summary.n_stale:
        raise SystemExit(f"demo: {summary.n_failed} student run(s) failed, {summary.n_stale} stale (completed with "
                         f"other parameters; see docs/GRIDS.md); see {summary.batch_dir}/*/status.json")
    nokd_dir = summary.batch_dir / f"nokd__seed{grid.seeds[0]}"
    distil_dir = summary.batch_dir / f"distilvpr__seed{grid.seeds[0]}"
    timings["03 batch"] = time.time() - t

    t = _step("5/8 notebook 04: ablation analysis")
    _run_notebook("04_ablation_analysis", demo_dir / "04_ablation_analysis", {"batch": str(summary.batch_dir)})
    timings["04"] = time.time() - t

    t = _step("6/8 notebook 05: retrieval browser (static renders)")
    _run_notebook("05_retrieval_browser", demo_dir / "05_retrieval_browser",
                  {"dataset": str(dataset), "models": {"teacher": str(teacher), "no-KD student": str(nokd_dir),
                                        "DistilVPR student": str(distil_dir)}})
    timings["05"] = time.time() - t

    t = _step("7/8 the benchmark at a reduced size: distilvpr benchmark run, then notebook 06")
    spec = demo_benchmark_spec(demo_dir, Path(data_root).resolve(), Path(teacher_root).resolve())
    run_demo_benchmark(spec, demo_dir / "06_benchmark_report")
    timings["benchmark"] = time.time() - t

    _step("8/8 report")
    timings["total"] = time.time() - start
    report = write_report(demo_dir, teacher, nokd_dir, distil_dir, summary.batch_dir, timings)
    print(f"report: {report}  (total {timings['total'] / 60:.1f} min)")
    return report


#: The demo's benchmark (step 7): ablations/benchmark_smoke.yaml with these changes (one world; one configuration
#: per method, so tuning is 2 runs: nokd and distilvpr_x10, which makes the tuned row differ from the paper's preset;
#: 3 rows x 2 seeds = 6 final runs). 2 seeds is the fewest a paired interval takes.
DEMO_BENCHMARK: dict[str, Any] = {"worlds": 1, "weight_scales": [10], "nokd_lr_scales": [1], "seeds": [0, 1]}


def demo_benchmark_spec(demo_dir: Path, data_root: Path, teacher_root: Path) -> Path:
    """Write the demo's benchmark spec, ``<demo_dir>/benchmark/spec.yaml``: ``ablations/benchmark_smoke.yaml`` cut as
    :data:`DEMO_BENCHMARK` says, its world and prior generated under ``<data_root>/bench-demo/``, its prior and
    teacher under ``<teacher_root>/bench-demo/``, its run folders and records under ``<demo_dir>/benchmark/``
    (absolute paths). Returns the spec's path (rewritten only when its text changes, so a resumed demo keeps it)."""
    import yaml

    from distilvpr_lib.benchmark import load_spec
    from distilvpr_lib.data.files import atomic_write

    raw = yaml.safe_load(project_path("ablations/benchmark_smoke.yaml").read_text())
    data, weights, bench_dir = data_root / "bench-demo", teacher_root / "bench-demo", demo_dir / "benchmark"
    raw.update(name="bench-demo", out=str(bench_dir / "runs"), records=str(bench_dir / "records"),
               notebook=str(project_path(raw["notebook"])))
    raw["prior"] = {"args": ["--profile", "smoke", "--dataset", str(data / "prior"), "--out", str(weights / "prior")],
                    "folder": str(weights / "prior"), "dataset": str(data / "prior")}
    raw["worlds"] = raw["worlds"][:DEMO_BENCHMARK["worlds"]]
    for world in raw["worlds"]:
        out = str(data / world["name"])
        world["synth"][world["synth"].index("--out") + 1] = out
        world.update(dataset=out, teacher=str(weights / world["name"]))
    raw["tuning"].update(weight_scales=DEMO_BENCHMARK["weight_scales"], nokd_lr_scales=DEMO_BENCHMARK["nokd_lr_scales"])
    raw["final"]["seeds"] = DEMO_BENCHMARK["seeds"]
    text = ("# The demo's benchmark (distilvpr_lib.demo.demo_benchmark_spec): ablations/benchmark_smoke.yaml at a "
            "reduced size.\n" + yaml.safe_dump(raw, sort_keys=False))
    path = bench_dir / "spec.yaml"
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, mode="w") as fh:
            fh.write(text)
    load_spec(path)  # checked as every spec is (one line naming the key)
    return path


def run_demo_benchmark(spec: Path, report_dir: Path) -> None:
    """``distilvpr benchmark run <spec>`` (every stage, resumable: done cells are skipped), then notebook 06 over its
    records into ``report_dir``."""
    command = [sys.executable, "-m", "distilvpr_lib.cli", "benchmark", "run", str(spec)]
    print("    $ distilvpr benchmark run " + str(spec), flush=True)
    proc = subprocess.run(command, cwd=project_path("."), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = spec.parent / "benchmark_run.log"
    log.write_text(proc.stdout)
    if proc.returncode != 0:
        raise SystemExit(f"demo step benchmark failed (exit {proc.returncode}): "
                         f"{(proc.stdout.strip().splitlines() or [''])[-1]}\n  log: {log}")
    print("    " + "\n    ".join(line for line in proc.stdout.splitlines() if line.startswith(("[setup]", "[choose]",
                                                                                           "[collect]"))))
    _run_notebook("06_benchmark_report", report_dir, {"spec": str(spec), "out": str(report_dir)})


def write_report(demo_dir: Path, teacher: Path, nokd_dir: Path, distil_dir: Path, batch_dir: Path,
                 timings: dict[str, float]) -> Path:
    """Write ``report.md`` with the key tables and the paths of every figure."""
    from distilvpr_lib.data.files import atomic_write
    from distilvpr_lib.analysis.report import comparison_table

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
                  pd.read_csv(study_csv, index_col=0, dtype=str, keep_default_na=False).to_markdown(), "",
                  "This is a reduced run of the question (few seeds, a small undertrained setting). The full "
                  "study — profile `study`, a visual prior, a stronger teacher, >= 5 seeds, diagnostics — is "
                  "`make study` (docs/study/LOG.md, where distilvpr_norm was chosen on validation).", ""]
    tables = demo_dir / "benchmark" / "records" / "tables.md"
    if tables.is_file():
        lines += ["## The benchmark at a reduced size (step 7: `distilvpr benchmark run` of a cut smoke spec)", "",
                  "The pre-registered benchmark's stages (docs/benchmark/PROTOCOL.md) on one smoke world, two seeds, "
                  "one configuration per method: the numbers mean nothing at this size (2-epoch students, a teacher "
                  "that fails the gate and is flagged); the structure is the real one (`make benchmark`). Notebook "
                  f"06's render: {demo_dir / '06_benchmark_report' / 'notebook.ipynb'}.", "",
                  tables.read_text().strip(), ""]
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
