"""Static figures of the workbook (``from distilvpr_lib.viz import figures``; ``figures.plot_run_map(...)``),
split by concern into :mod:`.dataset` (data-exploration figures), :mod:`.tables` (the tables they read from a
benchmark) and :mod:`.training` (training curves, ablations, embedding projection). This package exposes
them under one name for the notebooks.

Every function takes plain data or a :class:`~distilvpr_lib.data.benchmark.Benchmark` and returns a
new :class:`matplotlib.figure.Figure` built without pyplot (see :mod:`distilvpr_lib.viz._common`).
"""

from distilvpr_lib.viz.figures.dataset import (
    plot_cloud_and_image,
    plot_place_across_runs,
    plot_premise,
    plot_real_vs_generated,
    plot_realism_table,
    plot_run_map,
    plot_split_sizes,
    plot_submap,
)
from distilvpr_lib.viz.figures.tables import (
    CONDITION_FILES,
    benchmark_places,
    default_place,
    load_run_conditions,
    nearest_submaps,
    region_squares,
    split_size_table,
)
from distilvpr_lib.viz.figures.training import (
    BATCH_METRICS,
    ablation_bars,
    curvature_plot,
    embedding_projection,
    metrics_history,
    plot_ablation_bars,
    plot_training_curves,
    training_curves,
)

__all__ = [
    "BATCH_METRICS", "CONDITION_FILES", "ablation_bars", "benchmark_places", "curvature_plot", "default_place",
    "embedding_projection", "load_run_conditions", "metrics_history", "nearest_submaps", "plot_ablation_bars",
    "plot_cloud_and_image", "plot_place_across_runs", "plot_premise", "plot_real_vs_generated",
    "plot_realism_table", "plot_run_map", "plot_split_sizes", "plot_submap", "plot_training_curves",
    "region_squares", "split_size_table", "training_curves",
]
