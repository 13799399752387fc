"""What the notebooks analyse with, in one module: ``from distilvpr_lib.analysis.workbook import ablation_table``.

Each name is defined in a submodule of :mod:`distilvpr_lib.analysis` (:data:`HOMES` says which) and re-exported
here unchanged; the notebooks import nothing else from the analysis layer (tests/test_architecture.py).
"""

from __future__ import annotations

from distilvpr_lib.analysis.benchmark_records import validation_history_table
from distilvpr_lib.analysis.relation_information import mean_over_seeds, relation_auc_table, relation_run_dirs
from distilvpr_lib.analysis.report import (
    ablation_table,
    choose_on_validation,
    comparison_table,
    config_table,
    curvature_sweep,
    diagnostics_table,
    embedding_norm_table,
    epoch_table,
    loss_magnitudes,
    paired_differences,
    paired_statistics,
    study_table,
)
from distilvpr_lib.analysis.retrieval_queries import results_table, retrieval_report, select_queries
from distilvpr_lib.analysis.run_records import read_recorded_runs, study_runs_table, with_recorded_runs
from distilvpr_lib.analysis.run_results import finished_runs, gather_results

#: Every name of this module, by the submodule of :mod:`distilvpr_lib.analysis` that defines it.
HOMES: dict[str, tuple[str, ...]] = {
    "report": ("ablation_table", "choose_on_validation", "comparison_table", "config_table", "curvature_sweep",
               "diagnostics_table", "embedding_norm_table", "epoch_table", "loss_magnitudes", "paired_differences",
               "paired_statistics", "study_table"),
    "relation_information": ("mean_over_seeds", "relation_auc_table", "relation_run_dirs"),
    "run_records": ("read_recorded_runs", "study_runs_table", "with_recorded_runs"),
    "retrieval_queries": ("results_table", "retrieval_report", "select_queries"),
    "run_results": ("finished_runs", "gather_results"),
    "benchmark_records": ("validation_history_table",),
}

__all__ = sorted(name for names in HOMES.values() for name in names)
