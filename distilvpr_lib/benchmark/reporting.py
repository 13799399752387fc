"""The benchmark's reading stages: report, the README answer and its check, verify, status and plan (see
:mod:`distilvpr_lib.benchmark`).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from distilvpr_lib.benchmark.spec import (
    CHOSEN_FILE,
    COMPARISONS_CSV,
    NOKD,
    PAPER_ROW,
    README_BEGIN,
    README_END,
    SETUP_FILE,
    STAGES,
    TABLES_FILE,
    TUNING_CSV,
    BenchmarkSpec,
    BenchmarkStateError,
    Log,
    World,
    cell_name,
    final_config,
    records_dir,
    stage_dir,
    student_grid,
    tuning_configs,
    world_dir,
)
from distilvpr_lib.benchmark.provenance import machine_problem
from distilvpr_lib.benchmark.stages import (
    read_cell,
    read_chosen,
    read_json,
    run_choose,
    run_collect,
    run_final,
    run_grid,
    run_setup,
    run_tune,
    setup_record,
    write_csv,
)
from distilvpr_lib.data.files import atomic_write
from distilvpr_lib.errors import DataFormatError, MissingDataError, OptionError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

def load_records(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> dict[str, "pd.DataFrame"]:  # noqa: F821
    """The committed per-world CSVs (in ``records``, default the spec's folder), fingerprint-checked (PROTOCOL §8);
    worlds without rows are left out.

    Raises:
        FingerprintMismatchError: a world's rows (or its tuning rows) differ in a fingerprint.
    """
    import pandas as pd

    from distilvpr_lib.analysis.benchmark_records import check_fingerprints

    records = records if records is not None else records_dir(spec, root)
    tuning_path = records / TUNING_CSV
    tuning = pd.read_csv(tuning_path) if tuning_path.is_file() else None
    frames = {}
    for world in spec.worlds:
        path = records / f"{world.name}_runs.csv"
        if not path.is_file():
            continue
        frame = pd.read_csv(path)
        if frame.empty:
            continue
        check_fingerprints(frame, str(path), tuning if world.name == spec.tuning_world else None)
        frames[world.name] = frame
    return frames


def report_tables(spec: BenchmarkSpec, root: Path, records: Path | None = None,
                  ) -> tuple[dict[str, "pd.DataFrame"], "pd.DataFrame"]:  # noqa: F821
    """``({world: row table}, comparison table)`` from the committed records (see :func:`load_records`)."""
    from distilvpr_lib.analysis.benchmark_records import comparison_table, row_table

    frames = load_records(spec, root, records)
    tables = {w: row_table(f, spec.all_rows) for w, f in frames.items()}
    comparisons = comparison_table(frames, spec.rows, spec.baseline, spec.tuned, spec.versus, spec.alpha,
                                   spec.bootstrap_resamples, spec.bootstrap_seed, extra=spec.extra_rows)
    return tables, comparisons


def report_markdown(spec: BenchmarkSpec, root: Path) -> str:
    """The report's tables as markdown: per world mean ± sd per row, then every comparison."""
    from distilvpr_lib.analysis.benchmark_records import markdown_table

    tables, comparisons = report_tables(spec, root)
    if not tables:
        return "No benchmark rows committed yet."
    out = []
    for world, table in tables.items():
        out.append(f"### {world}: test AR@1 per row (mean ± sd over seeds)\n")
        out.append(markdown_table(
            ["row", "configuration", "n", "test AR@1", "AR@5", "AR@1%", "val AR@1", "max last-quarter gain",
             "runs not flat"],
            [[f"`{r.row}`", f"`{r.config}`", r.n, f"{r.test_ar1:.2f} ± {r.test_ar1_sd:.2f}",
              f"{r.test_ar5:.2f} ± {r.test_ar5_sd:.2f}", f"{r.test_ar1pct:.2f} ± {r.test_ar1pct_sd:.2f}",
              f"{r.val_ar1:.2f}", f"{r.last_quarter_gain_max:.2f}", r.not_flat] for r in table.itertuples()]))
        out.append("")
    out.append("### Comparisons (paired by seed; Holm over the whole family, both worlds"
               + ("; your rows' family C apart" if spec.extra_rows else "") + ")\n")
    out.append(markdown_table(
        ["world", "family", "first − second", "n", "Δ", "95 % t", "p (t)", "p (Holm)", "95 % BCa", "p (Wilcoxon)",
         "MDE", "verdict"],
        [[c.world, c.family, f"`{c.first}` − `{c.second}`", c.n, f"{c.delta:+.2f}", f"[{c.t_low:+.2f}, {c.t_high:+.2f}]",
          f"{c.p_t:.4f}", f"{c.p_holm:.4f}", f"[{c.bca_low:+.2f}, {c.bca_high:+.2f}]", f"{c.p_wilcoxon:.4f}",
          f"{c.mde:.2f}", c.verdict] for c in comparisons.itertuples()]))
    return "\n".join(out)


def run_report(spec: BenchmarkSpec, root: Path, log: Log = print) -> str:
    """Print and write ``<records>/tables.md`` and ``<records>/comparisons.csv``; returns the markdown."""
    text = report_markdown(spec, root)
    records = records_dir(spec, root)
    records.mkdir(parents=True, exist_ok=True)
    with atomic_write(records / TABLES_FILE, mode="w") as fh:
        fh.write(text + "\n")
    _, comparisons = report_tables(spec, root)
    if not comparisons.empty:
        write_csv(records / COMPARISONS_CSV, comparisons)
    log(text)
    for world in spec.worlds:
        path = records / f"{world.name}_setup.json"
        if path.is_file() and read_json(path).get("teacher_gate", {}).get("flagged"):
            log(f"[report] FLAG: world {world.name}'s teacher failed the gate (PROTOCOL §2): flagged")
    return text


def final_run_folders(spec: BenchmarkSpec, root: Path) -> dict[tuple[str, str, int], Path]:
    """``{(world, row, seed): run folder}`` of the final cells whose folders exist here (for the report's curves)."""
    out = {}
    for world in spec.worlds:
        for row in spec.all_rows:
            for seed in spec.seeds:
                folder = stage_dir(spec, world.name, "final", root) / cell_name(row, seed)
                if folder.is_dir():
                    out[(world.name, row, int(seed))] = folder
    return out


def setup_flags(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> list[str]:
    """One line per world from its committed setup record: teacher gate (retried, flagged), no shared place."""
    records = records if records is not None else records_dir(spec, root)
    lines = []
    for world in spec.worlds:
        path = records / f"{world.name}_setup.json"
        if not path.is_file():
            lines.append(f"{world.name}: no setup record ({path.name})")
            continue
        record = read_json(path)
        gate = record.get("teacher_gate", {})
        heads = ", ".join(f"{k} {v:.2f}" for k, v in gate.get("test_ar1", {}).items())
        state = ("FLAGGED (failed twice)" if gate.get("retried") else "FLAGGED (failed, not retrained)") if gate.get(
            "flagged") else ("passed after one retraining" if gate.get(
            "retried") else "passed") if gate.get("passed") or gate.get("flagged") else "failed"
        places = record.get("no_shared_place", {})
        lines.append(f"{world.name}: teacher gate {state} (test AR@1 {heads}); shared places with the prior world: "
                     f"{places.get('shared')}; commit {record.get('fingerprints', {}).get('code_commit', '?')[:12]}")
    return lines


def answer(spec: BenchmarkSpec, root: Path, records: Path | None = None) -> str:
    """The README's ten-line answer and main table (markdown), generated from the committed records."""
    from distilvpr_lib.analysis.benchmark_records import answer_markdown

    tables, comparisons = report_tables(spec, root, records)
    return answer_markdown(tables, comparisons, spec.baseline, spec.tuned, spec.versus, protocol=spec.protocol,
                           alpha=spec.alpha, extra=spec.extra_rows)


def readme_block(text: str, source: str = "README.md") -> str:
    """The text between :data:`README_BEGIN` and :data:`README_END` (stripped).

    Raises:
        DataFormatError: the markers are missing or out of order.
    """
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < 0 or end < begin:
        raise DataFormatError(f"no block between {README_BEGIN} and {README_END}", path=source,
                              hint="add the two markers around the benchmark answer")
    return text[begin + len(README_BEGIN):end].strip()


def check_readme(spec: BenchmarkSpec, root: Path, readme: str | os.PathLike) -> bool:
    """Whether the README's generated block equals :func:`answer` recomputed from the records."""
    path = Path(readme)
    if not path.is_file():
        raise MissingDataError("README not found", path=path)
    return readme_block(path.read_text(), str(path)) == answer(spec, root).strip()


# ---------------------------------------------------------------------------
# verify, status, plan
# ---------------------------------------------------------------------------
def parse_cell(spec: BenchmarkSpec, cell: str) -> tuple[World, str, str, int]:
    """``<world>/<stage>/<row>__seed<k>`` (or ``<world>/<row>__seed<k>``: a final cell) -> (world, stage, row, seed).

    Raises:
        OptionError: not a cell of this spec.
    """
    parts = cell.strip("/").split("/")
    if len(parts) == 2:
        parts = [parts[0], "final", parts[1]]
    if len(parts) != 3 or "__seed" not in parts[2] or parts[1] not in {"tune", "final"}:
        raise OptionError(f"cell {cell!r}: expected <world>/[tune|final/]<row>__seed<k>")
    name, stage, run = parts
    row, _, seed = run.rpartition("__seed")
    try:
        world = spec.world(name)
        seed_value = int(seed)
    except (KeyError, ValueError) as exc:
        raise OptionError(f"cell {cell!r}: {exc}") from exc
    allowed = ({c.config for c in tuning_configs(spec)}, {spec.tuning_seed}) if stage == "tune" else (
        set(spec.all_rows), set(spec.seeds))
    if row not in allowed[0] or seed_value not in allowed[1] or (stage == "tune" and name != spec.tuning_world):
        raise OptionError(f"cell {cell!r} is not a {stage} cell of {spec.source}")
    return world, stage, row, seed_value


def verify(spec: BenchmarkSpec, root: Path, cells: Sequence[str], log: Log = print,
           work: str | os.PathLike | None = None) -> bool:
    """Re-run ``cells`` from scratch into a temporary folder with the same spec and setup, and compare test AR@1
    and the weights' SHA-256 with the committed rows; prints ``equal`` / ``differs`` per cell. True when all equal.

    Raises:
        OptionError: a bad cell name. BenchmarkStateError: no committed row for a cell.
    """
    import pandas as pd

    parsed = [parse_cell(spec, c) for c in cells]
    records = records_dir(spec, root)
    chosen = read_chosen(spec, root)["methods"]
    all_equal = True
    with tempfile.TemporaryDirectory(prefix="bench-verify-", dir=work) as tmp:
        for cell, (world, stage, row, seed) in zip(cells, parsed):
            if stage == "tune":
                committed_path = records / TUNING_CSV
                config, key = row, "config"
            else:
                committed_path = records / f"{world.name}_runs.csv"
                config, key = final_config(spec, world, row, chosen), "row"
            frame = pd.read_csv(committed_path) if committed_path.is_file() else pd.DataFrame(columns=[key, "seed"])
            match = frame[(frame[key] == row) & (frame["seed"] == seed)]
            if match.empty:
                raise BenchmarkStateError(f"no committed row for cell {cell}", path=committed_path)
            committed = match.iloc[0]
            setup = setup_record(spec, world.name, root)
            grid = student_grid(spec, root, world, stage, [(row, config)], [seed], setup)
            out_root = Path(tmp) / world.name
            # the spec's workers: the same threads per run as the recorded cell (cpu_count // workers)
            run_grid(spec, root, grid, world.name, spec.workers, log, only=[cell_name(row, seed)], out_root=out_root)
            fresh = read_cell(spec, root, world, stage, row, config, seed, batch_dir=out_root / grid.name)
            if fresh is None:
                log(f"[verify] {cell}: differs (the re-run did not finish)")
                all_equal = False
                continue
            same_ar1 = float(fresh["test_ar1"]) == float(committed["test_ar1"])
            same_sha = str(fresh["weights_sha256"]) == str(committed["weights_sha256"])
            verdict = "equal" if same_ar1 and same_sha else "differs"
            all_equal &= verdict == "equal"
            log(f"[verify] {cell}: {verdict} (test AR@1 {fresh['test_ar1']} vs committed {committed['test_ar1']}; "
                f"weights {str(fresh['weights_sha256'])[:12]} vs {str(committed['weights_sha256'])[:12]})")
    return all_equal


def _cell_state(run: Path) -> str:
    from distilvpr_lib.batch import STATUS_FILE, run_is_complete

    if run_is_complete(run):
        return "done"
    status = run / STATUS_FILE
    if status.is_file():
        try:
            state = json.loads(status.read_text()).get("status")
        except json.JSONDecodeError:
            state = None
        if state == "running":
            return "running"
        if state == "failed":
            return "failed"
    return "missing"


def stage_cells(spec: BenchmarkSpec, root: Path) -> dict[str, list[tuple[str, Path]]]:
    """Every student cell per stage label (``tune``, ``final/<world>``) as ``(cell, run folder)``; the final cells
    name their rows (their configurations come from chosen.yaml)."""
    tune = [(cell_name(c.config, spec.tuning_seed), stage_dir(spec, spec.tuning_world, "tune", root)
             / cell_name(c.config, spec.tuning_seed)) for c in tuning_configs(spec)]
    out = {"tune": tune}
    for world in spec.worlds:
        out[f"final/{world.name}"] = [(cell_name(r, s), stage_dir(spec, world.name, "final", root) / cell_name(r, s))
                                      for r in spec.all_rows for s in spec.seeds]
    return out


def status_lines(spec: BenchmarkSpec, root: Path) -> list[str]:
    """done / running / missing per stage (one line each)."""
    lines = []
    setups = [w.name for w in spec.worlds if (world_dir(spec, w.name, root) / SETUP_FILE).is_file()]
    lines.append(f"setup: {'done' if len(setups) == len(spec.worlds) else 'missing'} "
                 f"({len(setups)} of {len(spec.worlds)} worlds: {', '.join(setups) or 'none'})")
    cells = stage_cells(spec, root)
    for label in ["tune"] + [f"final/{w.name}" for w in spec.worlds]:
        states = [_cell_state(run) for _, run in cells[label]]
        counts = {s: states.count(s) for s in ("done", "running", "failed", "missing") if states.count(s)}
        overall = "done" if counts.get("done") == len(states) else ("running" if counts.get("running") else "missing")
        if label == "final/" + spec.worlds[0].name:
            chosen = (records_dir(spec, root) / CHOSEN_FILE).is_file()
            lines.append(f"choose: {'done' if chosen else 'missing'} ({records_dir(spec, root) / CHOSEN_FILE})")
        lines.append(f"{label}: {overall} ({', '.join(f'{k} {v}' for k, v in counts.items())} of {len(states)})")
    for world in spec.worlds:
        path = records_dir(spec, root) / f"{world.name}_runs.csv"
        n = max(0, len(path.read_text().splitlines()) - 1) if path.is_file() else 0
        lines.append(f"collect/{world.name}: {'done' if n == len(spec.all_rows) * len(spec.seeds) else 'missing'} "
                     f"({n} rows in {path})")
    report = records_dir(spec, root) / TABLES_FILE
    lines.append(f"report: {'done' if report.is_file() else 'missing'} ({report})")
    return lines


def plan_lines(spec: BenchmarkSpec, root: Path) -> list[str]:
    """The stages and their cells (run names) with counts and what is done."""
    epochs, milestones = spec.schedule
    lines = [f"benchmark {spec.name} ({spec.source}; protocol {spec.protocol}); students: {spec.profile} profile, "
             f"{epochs} epochs, LR step after {list(milestones)}; {spec.workers} runs side by side",
             f"setup: prior ({spec.prior_folder}), worlds {', '.join(w.name for w in spec.worlds)} "
             f"(teachers: {spec.teacher_epochs} epochs, step {list(spec.teacher_milestones)}, gate fused AR@1 >= "
             f"{spec.gate_ar1:g})"]
    if spec.machine != "any":
        problem = machine_problem(spec)
        lines.append(f"machine: {spec.machine}; this machine "
                     + (f"may NOT make rows: {problem}" if problem else "may make rows"))
    cells = stage_cells(spec, root)
    configs = tuning_configs(spec)
    per_method = {m: [c.config for c in configs if c.method == m] for m in (NOKD, *spec.kd_methods, *spec.extra_rows)}
    lines.append(f"tune: {len(configs)} cells on {spec.tuning_world} (seed {spec.tuning_seed}), "
                 f"{sum(_cell_state(r) == 'done' for _, r in cells['tune'])} done")
    for method, names in per_method.items():
        mark = " [extra row]" if method in spec.extra_rows else ""
        lines.append(f"  {method}{mark} ({len(names)}): {' '.join(names)}")
    lines.append(f"choose: -> {records_dir(spec, root) / TUNING_CSV}, {records_dir(spec, root) / CHOSEN_FILE}")
    for world in spec.worlds:
        label = f"final/{world.name}"
        done = sum(_cell_state(r) == "done" for _, r in cells[label])
        lines.append(f"{label}: {len(cells[label])} cells ({len(spec.all_rows)} rows x seeds {list(spec.seeds)}), "
                     f"{done} done; {PAPER_ROW} = {world.paper_preset}")
        lines.append("  " + " ".join(c for c, _ in cells[label]))
    total = len(configs) + sum(len(cells[f"final/{w.name}"]) for w in spec.worlds)
    lines.append(f"collect: -> {', '.join(str(records_dir(spec, root) / f'{w.name}_runs.csv') for w in spec.worlds)}")
    lines.append(f"report: -> {records_dir(spec, root) / TABLES_FILE}; {total} student runs in all")
    return lines


def run_stages(spec: BenchmarkSpec, root: Path, stages: Sequence[str] | None = None, workers: int | None = None,
               log: Log = print) -> None:
    """Run ``stages`` (default: all, in order), each skipping what is done."""
    for stage in stages or STAGES:
        log(f"== benchmark stage {stage}")
        if stage == "setup":
            run_setup(spec, root, log)
        elif stage == "tune":
            run_tune(spec, root, workers, log)
        elif stage == "choose":
            run_choose(spec, root, log)
        elif stage == "final":
            run_final(spec, root, workers, log)
        elif stage == "collect":
            run_collect(spec, root, log)
        elif stage == "report":
            run_report(spec, root, log)
        else:
            raise OptionError(f"unknown stage {stage!r}; stages: {list(STAGES)}")
