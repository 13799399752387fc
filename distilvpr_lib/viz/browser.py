"""The interactive retrieval browser of notebook 05 (ipywidgets; imported only when a browser is built).

:class:`RetrievalBrowser`: database run, query run, query slider + dropdown, model toggle, "compare models",
"only queries the student gets wrong"; it renders with the static functions of :mod:`.retrieval` into
``ipywidgets.Image`` widgets, so its displayed query image changes (new PNG bytes) whenever the query changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from distilvpr_lib.analysis.retrieval_queries import QueryView, common_queries, default_student, wrong_queries
from distilvpr_lib.analysis.run_results import check_results
from distilvpr_lib.viz._common import MATCH_COLOUR, MISS_COLOUR, figure_png, new_figure
from distilvpr_lib.viz.retrieval import ImageSource, render_query


class RetrievalBrowser:
    """An ipywidgets app to browse retrievals of one or several models.

    Controls: database run, query run, query (slider and dropdown, kept in sync), model
    (toggle buttons), "compare models" (one row per model, same query), "only queries <student>
    gets wrong" (top-1 miss). Views: the query image (:attr:`query_image`, an ``ipywidgets.Image``
    whose PNG bytes change with the query), the top-k picture (:attr:`retrieval_image`) and the
    map (:attr:`map_image`), all drawn by the static functions of this module.

    Display it as the last expression of a cell (or ``display(browser)``); drive it from code with
    :meth:`select`; read :attr:`state` to see what is shown.

    Args:
        benchmark: the loaded Benchmark the results were computed on.
        results: ``{label: RetrievalResults}`` (or one RetrievalResults).
        split: the split the results belong to.
        top_k: how many retrieved items to show.
        student: label whose mistakes the "wrong" filter uses (default :func:`default_student`).
        figure_dpi: resolution of the rendered pictures.
    """

    def __init__(self, benchmark: Any, results: Mapping[str, Any] | Any, split: str = "test", top_k: int = 5,
                 student: str | None = None, figure_dpi: int = 80) -> None:
        import ipywidgets as w

        if not isinstance(results, Mapping):
            results = {"model": results}
        if not results:
            raise ValueError("RetrievalBrowser: no results to browse")
        check_results(results, benchmark, split)
        self.benchmark = benchmark
        self.results: dict[str, Any] = dict(results)
        self.split = split
        self.top_k = int(top_k)
        self.figure_dpi = int(figure_dpi)
        self.labels = list(self.results)
        self.student = student or default_student(self.labels)
        if self.student not in self.results:
            raise KeyError(f"RetrievalBrowser: unknown student {self.student!r}; known: {self.labels}")
        self.images = ImageSource(benchmark)
        first = self.results[self.labels[0]]
        self.run_names = list(first.run_names) or [str(r) for r in range(len(first.database_sizes))]
        self.pairs = sorted(first.retrievals)
        self.views: list[QueryView] = []
        self.renders = 0
        self._busy = False

        start_i, start_j = self._first_pair()
        run_options = [(f"{r}: {n}", r) for r, n in enumerate(self.run_names)]
        self.database_run = w.Dropdown(options=run_options, value=start_i, description="database run",
                                       style={"description_width": "initial"})
        self.query_run = w.Dropdown(options=self._query_run_options(start_i), value=start_j, description="query run",
                                    style={"description_width": "initial"})
        self.query_slider = w.IntSlider(value=0, min=0, max=0, description="query #", continuous_update=False,
                                        style={"description_width": "initial"}, layout=w.Layout(width="420px"))
        self.query_dropdown = w.Dropdown(options=[], description="query", style={"description_width": "initial"})
        self.model = w.ToggleButtons(options=self.labels, value=self.labels[0], description="model",
                                     style={"description_width": "initial", "button_width": "auto"})
        self.compare = w.Checkbox(value=False, description="compare models", indent=False,
                                  disabled=len(self.labels) < 2)
        self.wrong_only = w.Checkbox(value=False, description=f"only queries {self.student} gets wrong", indent=False)
        self.status = w.HTML()
        self.query_image = w.Image(format="png", layout=w.Layout(width="260px"))
        self.retrieval_image = w.Image(format="png", layout=w.Layout(max_width="100%"))
        self.map_image = w.Image(format="png", layout=w.Layout(width="420px"))
        for widget, name in ((self.query_slider, "query-slider"), (self.query_dropdown, "query-dropdown"),
                             (self.query_image, "query-image"), (self.retrieval_image, "retrieval-image"),
                             (self.map_image, "map-image"), (self.database_run, "database-run"),
                             (self.query_run, "query-run"), (self.model, "model"), (self.compare, "compare"),
                             (self.wrong_only, "wrong-only"), (self.status, "status")):
            widget.add_class(f"distilvpr-{name}")

        self.database_run.observe(self._on_database_run, names="value")
        self.query_run.observe(self._on_filter, names="value")
        self.wrong_only.observe(self._on_filter, names="value")
        self.query_slider.observe(self._on_slider, names="value")
        self.query_dropdown.observe(self._on_dropdown, names="value")
        self.model.observe(self._on_render, names="value")
        self.compare.observe(self._on_render, names="value")

        self.widget = w.VBox([
            w.HBox([self.database_run, self.query_run]),
            w.HBox([self.query_slider, self.query_dropdown]),
            w.HBox([self.model, self.compare, self.wrong_only]),
            self.status,
            w.HBox([w.VBox([w.HTML("<b>query</b>"), self.query_image]), self.map_image]),
            self.retrieval_image,
        ])
        self.widget.add_class("distilvpr-retrieval-browser")
        self._refresh_queries()

    # ------------------------------------------------------------------ options
    def _first_pair(self) -> tuple[int, int]:
        for i, j in self.pairs:
            if len(self._candidates(i, j, False)):
                return i, j
        if not self.pairs:
            raise ValueError("RetrievalBrowser: the results hold no (database run, query run) pair")
        return self.pairs[0]

    def _query_run_options(self, database_run: int) -> list[tuple[str, int]]:
        return [(f"{j}: {self.run_names[j]}", j) for i, j in self.pairs if i == database_run]

    def _candidates(self, database_run: int, query_run: int, wrong_only: bool) -> np.ndarray:
        common = common_queries(self.results, database_run, query_run)
        if wrong_only:
            bad = wrong_queries(self.results[self.student], database_run, query_run)
            common = common[np.isin(common, bad)]
        return common

    def available_queries(self) -> np.ndarray:
        """Query indices selectable under the current run pair and filter."""
        return self._candidates(self.database_run.value, self.query_run.value, self.wrong_only.value)

    # ------------------------------------------------------------------ events
    def _on_database_run(self, change: Any) -> None:
        i = int(change["new"])
        options = self._query_run_options(i)
        previous = self.query_run.value
        self._busy = True
        try:
            self.query_run.options = options
            values = [v for _, v in options]
            self.query_run.value = previous if previous in values else (values[0] if values else None)
        finally:
            self._busy = False
        self._refresh_queries()

    def _on_filter(self, change: Any) -> None:
        if not self._busy:
            self._refresh_queries()

    def _refresh_queries(self) -> None:
        queries = self.available_queries() if self.query_run.value is not None else np.zeros(0, np.int64)
        previous = self.query_dropdown.value
        wrong = set(wrong_queries(self.results[self.student], self.database_run.value, self.query_run.value).tolist()) \
            if self.query_run.value is not None else set()
        self._busy = True
        try:
            self.query_dropdown.options = [(f"{q}{' ✗' if q in wrong else ''}", int(q)) for q in queries.tolist()]
            self.query_slider.max = max(len(queries) - 1, 0)
            self.query_slider.disabled = len(queries) <= 1
            if len(queries):
                position = int(np.flatnonzero(queries == previous)[0]) if previous in set(queries.tolist()) else 0
                self.query_slider.value = position
                self.query_dropdown.value = int(queries[position])
            else:
                self.query_slider.value = 0
        finally:
            self._busy = False
        self._render()

    def _on_slider(self, change: Any) -> None:
        if self._busy:
            return
        queries = self.available_queries()
        if not len(queries):
            return
        self._busy = True
        try:
            self.query_dropdown.value = int(queries[min(int(change["new"]), len(queries) - 1)])
        finally:
            self._busy = False
        self._render()

    def _on_dropdown(self, change: Any) -> None:
        if self._busy or change["new"] is None:
            return
        queries = self.available_queries()
        self._busy = True
        try:
            self.query_slider.value = int(np.flatnonzero(queries == int(change["new"]))[0])
        finally:
            self._busy = False
        self._render()

    def _on_render(self, change: Any) -> None:
        if not self._busy:
            self._render()

    # ------------------------------------------------------------------ drawing
    def _render(self) -> None:
        i, j, q = self.database_run.value, self.query_run.value, self.query_dropdown.value
        if j is None or q is None:
            self.views = []
            what = "only wrong queries: none for this pair" if self.wrong_only.value else "no evaluated query for this pair"
            self.status.value = f"<span style='color:{MISS_COLOUR}'>{what}</span>"
            self.query_image.value = self._placeholder_png(what)
            self.retrieval_image.value = self._placeholder_png(what)
            self.map_image.value = self._placeholder_png(what)
            return
        models = self.labels if self.compare.value else [self.model.value]
        fig, map_fig, views = render_query(self.benchmark, self.results, i, j, q, self.split, self.top_k, models,
                                           self.images)
        self.views = views
        self.query_image.value = self.images.png(views[0].query_rel)
        self.retrieval_image.value = figure_png(fig, self.figure_dpi)
        self.map_image.value = figure_png(map_fig, self.figure_dpi)
        parts = []
        for v in views:
            colour = MATCH_COLOUR if v.correct_at_1 else MISS_COLOUR
            rank = f"first match at #{v.first_match_rank}" if v.first_match_rank else f"no match in top-{len(v.matches)}"
            parts.append(f"<span style='color:{colour}'><b>{v.label}</b>: {'correct' if v.correct_at_1 else 'wrong'} "
                         f"at top-1, {rank}</span>")
        n = len(self.query_dropdown.options)
        self.status.value = (f"query <b>{q}</b> ({views[0].query_rel}) — {self.query_slider.value + 1} of {n} "
                             f"{'wrong ' if self.wrong_only.value else ''}queries; {len(views[0].true_neighbours)} true "
                             f"neighbours in the database<br>" + " &nbsp; ".join(parts))
        self.renders += 1

    def _placeholder_png(self, text: str) -> bytes:
        fig = new_figure(3, 1)
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=8)
        return figure_png(fig, self.figure_dpi)

    # ------------------------------------------------------------------ API
    def select(self, database_run: int | None = None, query_run: int | None = None, query_index: int | None = None,
               model: str | None = None, compare: bool | None = None, wrong_only: bool | None = None) -> dict[str, Any]:
        """Set controls from code (as a user would) and return :attr:`state`.

        Raises:
            ValueError: a query index that is not selectable under the current pair and filter.
        """
        if database_run is not None:
            self.database_run.value = int(database_run)
        if query_run is not None:
            self.query_run.value = int(query_run)
        if wrong_only is not None:
            self.wrong_only.value = bool(wrong_only)
        if model is not None:
            if model not in self.labels:
                raise KeyError(f"unknown model {model!r}; known: {self.labels}")
            self.model.value = model
        if compare is not None:
            self.compare.value = bool(compare)
        if query_index is not None:
            queries = self.available_queries().tolist()
            if int(query_index) not in queries:
                raise ValueError(f"query {query_index} is not selectable for this pair/filter; selectable: {queries[:30]}")
            self.query_dropdown.value = int(query_index)
        return self.state

    @property
    def state(self) -> dict[str, Any]:
        """What is selected and shown: runs, query, model(s), filter, and per model the top-1 outcome."""
        return {
            "database_run": self.database_run.value,
            "query_run": self.query_run.value,
            "query_index": self.query_dropdown.value,
            "query_position": self.query_slider.value,
            "n_queries": len(self.query_dropdown.options),
            "model": self.model.value,
            "compare": bool(self.compare.value),
            "wrong_only": bool(self.wrong_only.value),
            "student": self.student,
            "query_rel": self.views[0].query_rel if self.views else None,
            "shown_models": [v.label for v in self.views],
            "correct_at_1": {v.label: v.correct_at_1 for v in self.views},
            "renders": self.renders,
        }

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def _ipython_display_(self) -> None:  # pragma: no cover - notebook only
        from IPython.display import display

        display(self.widget)


__all__ = ["RetrievalBrowser"]
