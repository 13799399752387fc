"""The benchmark of issue 27, run from one spec file (``ablations/benchmark.yaml``; docs/benchmark/PROTOCOL.md).

``distilvpr benchmark run SPEC`` runs its stages, each resumable and skipping what is done:

``setup``    per world: the dataset (``distilvpr synth``), the shared visual prior (``distilvpr pretrain-image``), the
             teacher (``distilvpr train-teacher``) and its gate (PROTOCOL §2, retrained once when it fails), the
             "no shared place" check; writes ``<out>/<world>/setup.json`` and ``<records>/<world>_setup.json`` with
             the fingerprints (dataset content hash, prior and teacher SHA-256, code commit, torch, threads).
``tune``     the tuning grid (PROTOCOL §4) on the tuning world, through the batch runner: one cell =
             ``<config>__seed<tuning seed>`` under ``<out>/<tuning world>/tune/``.
``choose``   ``<records>/tuning.csv`` (every tuning run) and ``<records>/chosen.yaml`` (the §4 rule, ties included).
``final``    every row x seed on every world: one cell = ``<row>__seed<k>`` under ``<out>/<world>/final/``.
``collect``  ``<records>/<world>_runs.csv`` (PROTOCOL §8 columns) from the run folders, atomically.
``report``   mean ± sd per row, families A and B (paired t, Holm over the whole family, BCa, Wilcoxon, MDE,
             verdict), into ``<records>/tables.md`` and ``<records>/comparisons.csv``; a world whose rows differ in
             a fingerprint is refused.

Every cell's launch is stamped (``<stage folder>/launches.json``: code commit, torch version, and the setup's
fingerprints re-read at launch), and ``collect`` checks that each run folder ran what its name says (method,
seed, schedule, dataset, teacher, prior, and the machine the spec's ``machine`` key allows) before it writes a row.
With ``machine: cpu-native-bf16`` (the benchmark's) the training stages refuse to start on a machine that may not
make rows (:func:`~.stages.machine_problem`: PROTOCOL §5 "Machine"), and every row carries the run's ``machine``
fingerprint (device, CPU capability, autocast).

Modules: :mod:`.spec` (the spec, names, grids), :mod:`.provenance` (commit, torch, threads, the machine check), :mod:`.stages` (setup, tune, choose, final, collect) and
:mod:`.reporting` (report, answer, verify, status, plan); the public names are re-exported here.
"""

from __future__ import annotations

from distilvpr_lib.benchmark.spec import (
    BenchmarkSpec,
    BenchmarkSpecError,
    BenchmarkStateError,
    CHOSEN_FILE,
    COMPARISONS_CSV,
    LAUNCHES_FILE,
    MACHINES,
    Log,
    NOKD,
    PAPER_ROW,
    PRIOR_WEIGHTS,
    README_BEGIN,
    README_END,
    SETUP_FILE,
    STAGES,
    TABLES_FILE,
    TEACHER_WEIGHTS,
    TUNING_CSV,
    TuneConfig,
    World,
    at_root,
    cell_name,
    final_config,
    final_grid,
    load_spec,
    records_dir,
    resolve_root,
    stage_dir,
    student_grid,
    tune_grid,
    tuning_configs,
    world_dir,
)
from distilvpr_lib.benchmark.provenance import (
    check_machine,
    code_commit,
    machine_problem,
    row_machine_problem,
    threads_per_run,
    torch_version,
)
from distilvpr_lib.benchmark.stages import (
    cell_fingerprints,
    collect_world,
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
    teacher_gate,
    write_csv,
    write_yaml,
)
from distilvpr_lib.benchmark.reporting import (
    answer,
    check_readme,
    final_run_folders,
    load_records,
    parse_cell,
    plan_lines,
    readme_block,
    report_markdown,
    report_tables,
    run_report,
    run_stages,
    setup_flags,
    stage_cells,
    status_lines,
    verify,
)

__all__ = ["BenchmarkSpec", "BenchmarkSpecError", "BenchmarkStateError", "CHOSEN_FILE", "COMPARISONS_CSV", "LAUNCHES_FILE", "Log", "MACHINES", "NOKD", "PAPER_ROW", "PRIOR_WEIGHTS", "README_BEGIN", "README_END", "SETUP_FILE", "STAGES", "TABLES_FILE", "TEACHER_WEIGHTS", "TUNING_CSV", "TuneConfig", "World", "answer", "at_root", "cell_fingerprints", "cell_name", "check_machine", "check_readme", "code_commit", "collect_world", "final_config", "final_grid", "final_run_folders", "load_records", "load_spec", "machine_problem", "parse_cell", "plan_lines", "read_cell", "read_chosen", "read_json", "readme_block", "records_dir", "report_markdown", "report_tables", "resolve_root", "row_machine_problem", "run_choose", "run_collect", "run_final", "run_grid", "run_report", "run_setup", "run_stages", "run_tune", "setup_flags", "setup_record", "stage_cells", "stage_dir", "status_lines", "student_grid", "teacher_gate", "threads_per_run", "torch_version", "tune_grid", "tuning_configs", "verify", "world_dir", "write_csv", "write_yaml"]
