"""Visualisation: static figures (:mod:`.figures`), retrieval pictures and the ipywidgets retrieval
browser (:mod:`.retrieval`), and small output helpers (:func:`show_figure` saves a figure and shows it
inline, :func:`save_figure`, :func:`write_metrics`).

Nothing is imported eagerly beyond matplotlib's Agg canvas; ipywidgets and seaborn are imported when
a browser or a bar plot is built.
"""

from distilvpr_lib.viz._common import (MATCH_COLOUR, MISS_COLOUR, figure_png, in_notebook, save_figure, show_figure,
                                      write_metrics)

__all__ = ["MATCH_COLOUR", "MISS_COLOUR", "figure_png", "in_notebook", "save_figure", "show_figure",
           "write_metrics"]
