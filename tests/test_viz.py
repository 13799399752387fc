"""Tests of distilvpr_lib.viz: figures on a smoke dataset, retrieval frames, the browser's state
(without a browser). Notebooks 01-05 run through papermill in tests/test_notebooks.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.viz import MATCH_COLOUR, MISS_COLOUR, figure_png, save_figure, write_metrics
from distilvpr_lib.viz import figures as F
from distilvpr_lib.analysis import retrieval_queries as Q
from distilvpr_lib.analysis import run_results as RR
from distilvpr_lib.viz import browser as B
from distilvpr_lib.viz import retrieval as R
from viz_helpers import descriptor_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset_dir(smoke_dataset: Path) -> Path:
    """The session smoke dataset of conftest (read-only)."""
    return smoke_dataset


@pytest.fixture(scope="module")
def benchmark(dataset_dir: Path) -> Benchmark:
    return Benchmark.load(dataset_dir)


@pytest.fixture(scope="module")
def results(benchmark: Benchmark) -> dict:
    """Two stand-in 'models' (see viz_helpers.descriptor_results): a clean and a noisy descriptor."""
    return {"teacher": descriptor_results(benchmark), "distilvpr student": descriptor_results(benchmark, noise=0.25, seed=1)}


def _spine_colours(ax) -> set[tuple[float, ...]]:
    return {tuple(np.round(s.get_edgecolor(), 4)) for s in ax.spines.values()}


def _rgba(colour: str) -> tuple[float, ...]:
    return tuple(np.round(to_rgba(colour), 4))


# ---------------------------------------------------------------------------
# Data-exploration figures
# ---------------------------------------------------------------------------
def test_split_size_table_counts_the_pickles(benchmark: Benchmark) -> None:
    table = F.split_size_table(benchmark)
    assert table.loc["total", "training"] == len(benchmark.training_tuples)
    assert table.loc["total", "test database"] == sum(len(s) for s in benchmark.database_sets("test"))
    assert table.loc["total", "test query"] == sum(len(s) for s in benchmark.query_sets("test"))
    assert table.loc["total", "validation query"] == sum(len(s) for s in benchmark.query_sets("validation"))
    assert (table.drop(index="total").sum() == table.loc["total"]).all()


def test_run_map_draws_every_run_and_the_test_and_validation_squares(benchmark: Benchmark) -> None:
    fig = F.plot_run_map(benchmark)
    assert isinstance(fig, Figure)
    ax_runs, ax_roles = fig.axes[:2]
    # one scatter per run on the left; squares on both panels
    assert len(ax_runs.collections) == len(benchmark.run_names)
    squares = F.region_squares(benchmark)
    for ax in (ax_runs, ax_roles):
        rects = [p for p in ax.patches if isinstance(p, Rectangle)]
        assert len(rects) == len(squares["test"]) + len(squares["validation"])
    test_rect = next(p for p in ax_roles.patches if isinstance(p, Rectangle))
    n, e, half = squares["test"][0]
    assert test_rect.get_xy() == pytest.approx((e - half, n - half))
    assert test_rect.get_width() == pytest.approx(2 * half)
    labels = ax_roles.get_legend_handles_labels()[1]
    n_test_queries = sum(len(s) for s in benchmark.query_sets("test"))
    assert f"test query ({n_test_queries})" in labels
    assert figure_png(fig).startswith(PNG_MAGIC)


def test_place_across_runs_has_one_column_per_run_with_its_condition(benchmark: Benchmark) -> None:
    northing, easting = F.default_place(benchmark)
    names = benchmark.set_run_names("test")
    conditions = {run: f"cond-{k}" for k, run in enumerate(names)}
    fig = F.plot_place_across_runs(benchmark, northing, easting, conditions=conditions)
    image_axes = fig.axes[: len(names)]
    assert len(fig.axes) == 2 * len(names)  # images + bird's-eye views
    for ax, run in zip(image_axes, names):
        assert run in ax.get_title() and conditions[run] in ax.get_title()
        assert ax.images, "the run's camera image is drawn"
    nearest = F.nearest_submaps(benchmark, northing, easting)
    assert list(nearest["run"]) == names
    assert (nearest["distance_m"] < 25).all(), "every run passes the place"


def test_cloud_image_and_split_figures(benchmark: Benchmark) -> None:
    rel = benchmark.database_sets("test")[0][0]["query"]
    fig = F.plot_submap(benchmark, rel)
    assert len(fig.axes) == 3 and fig.axes[2].images
    fig = F.plot_split_sizes(benchmark)
    bars = [p for p in fig.axes[0].patches]
    assert len(bars) == 5 * len(F.split_size_table(benchmark).drop(index="total"))
    positives = [len(t.positives) for t in benchmark.training_tuples.values()]
    assert sum(p.get_height() for p in fig.axes[1].patches) == pytest.approx(len(positives))


def test_real_beside_generated(benchmark: Benchmark, oxford_real_dir: Path) -> None:
    from distilvpr_lib.data.synth.stats import load_clouds

    rel = benchmark.database_sets("test")[0][0]["query"]
    real = load_clouds(oxford_real_dir, limit=3)
    generated = [benchmark.read_cloud(rel)]
    fig = F.plot_real_vs_generated(real, generated, n=3)
    assert len(fig.axes) == 6 and not fig.axes[4].axison  # the missing generated panels are blank


def test_realism_table_rows_are_tinted_by_the_goal() -> None:
    table = pd.DataFrame({"generated": [3700.0, 0.05], "real": [3800.0, 0.011],
                          "relative_error": [0.026, 3.5], "within_tolerance": [True, False]},
                         index=["unique_voxels_0.01", "mean_nn_distance"])
    fig = F.plot_realism_table(table)
    cells = fig.axes[0].tables[0].get_celld()
    assert cells[(1, 0)].get_facecolor()[:3] == pytest.approx(to_rgba("#e3f5e1")[:3])
    assert cells[(2, 0)].get_facecolor()[:3] == pytest.approx(to_rgba("#fbe3e3")[:3])
    assert cells[(1, 0)].get_text().get_text() == "3700"


def test_conditions_are_read_from_the_generator_manifest(tmp_path: Path) -> None:
    (tmp_path / "synth_manifest.json").write_text(json.dumps(
        {"seed": 0, "runs": [{"name": "2014-05-19-13-20-57", "archetype": "night", "season": "winter"},
                             {"name": "2014-06-02-08-10-00", "archetype": "sunny", "season": "summer"}]}))
    assert F.load_run_conditions(tmp_path) == {"2014-05-19-13-20-57": "night, winter",
                                               "2014-06-02-08-10-00": "sunny, summer"}
    assert F.load_run_conditions(tmp_path / "absent") == {}


def test_realism_and_premise_verdicts_name_what_fails() -> None:
    from distilvpr_lib.viz.exploration import premise_verdict, realism_verdict

    realism = pd.DataFrame({"generated": [3700.0, 0.05], "real": [3800.0, 0.011], "relative_error": [0.026, 3.55],
                            "within_tolerance": [True, False]}, index=["unique_voxels_0.01", "mean_nn_distance"])
    text = realism_verdict(realism)
    assert "**1 of 2**" in text and "mean_nn_distance" in text and "unique_voxels" not in text.split("Not within")[1]
    premise = pd.DataFrame({"run": ["A", "B", "C"], "archetype": ["same run (control)", "night", "fog"],
                            "season": ["summer", "winter", "autumn"], "image_auc": [0.95, 0.55, 0.75],
                            "cloud_auc": [0.99, 0.97, 0.70]})
    text = premise_verdict(premise)
    assert "images 0.65" in text and "clouds 0.83" in text and "in 1 of 2 runs" in text
    assert "Hardest run for images: B (night, winter)" in text and "Control" in text


# ---------------------------------------------------------------------------
# Training curves and ablations
# ---------------------------------------------------------------------------
def test_training_curves_read_the_engine_metrics_schema() -> None:
    metrics = {"best_epoch": 2, "epochs": [
        {"epoch": e, "lr": {"image": 1e-4}, "losses": {"triplet": 1.0 / e, "rkdg_distance": 0.3 / e, "total": 1.3 / e},
         "stats": {"active_fraction": 0.5}, "validation": {"AR@1": v, "AR@5": v + 10, "per_run_AR@1": {"r": v}}}
        for e, v in ((1, 40.0), (2, 55.0), (3, 50.0))]}
    fig = F.training_curves(metrics)
    ax_loss, ax_rec = fig.axes
    assert sorted(l.get_label() for l in ax_loss.lines if not l.get_label().startswith("_")) == \
        ["losses/rkdg_distance", "losses/total", "losses/triplet"]
    recall_lines = {l.get_label(): l for l in ax_rec.lines if not l.get_label().startswith("_")}
    assert set(recall_lines) == {"validation/AR@1", "validation/AR@5"}
    assert list(recall_lines["validation/AR@1"].get_ydata()) == [40.0, 55.0, 50.0]
    with pytest.raises(ValueError, match="no per-epoch history"):
        F.metrics_history({"test": {"AR@1": 1.0}})


def test_training_curves_mark_the_selected_epoch_with_integer_ticks() -> None:
    """The circles sit at the validation-selected epoch (epoch 2: AR@5 peaks at 3), ticks are whole epochs, and a
    one-epoch run is drawn as visible points."""
    metrics = {"best_epoch": 2, "epochs": [
        {"epoch": e, "losses": {"total": 1.0 / e}, "validation": {"AR@1": a, "AR@5": b}}
        for e, a, b in ((1, 40.0, 60.0), (2, 55.0, 70.0), (3, 50.0, 75.0))]}
    ax_loss, ax_rec = F.training_curves(metrics).axes
    circled = np.concatenate([c.get_offsets() for c in ax_rec.collections])
    assert circled.tolist() == [[2.0, 55.0], [2.0, 70.0]]
    for ax in (ax_loss, ax_rec):
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    one = {"best_epoch": 1, "epochs": metrics["epochs"][:1]}
    ax_loss, ax_rec = F.training_curves(one).axes
    lines = [l for l in ax_loss.lines + ax_rec.lines if not l.get_label().startswith("_")]
    assert lines and all(l.get_marker() == "o" and l.get_markersize() >= 6 for l in lines)


def test_ablation_bars_show_the_mean_over_seeds_with_sd_error_bars() -> None:
    runs = pd.DataFrame({"variation": ["nokd"] * 3 + ["distilvpr"] * 3 + ["broken"],
                         "status": ["ok"] * 6 + ["failed"],
                         "test.AR@1": [50.0, 52.0, 54.0, 60.0, 61.0, 65.0, 99.0]})
    fig = F.ablation_bars(runs, metrics=["test.AR@1", "test.AR@5"])  # absent AR@5 column is skipped
    ax = fig.axes[0]
    heights = sorted(round(p.get_height(), 6) for p in ax.patches if p.get_height() > 0)
    assert heights == [52.0, 62.0], "failed runs left out, bars are seed means"
    # seaborn draws each error bar with its caps as one line (segments separated by NaN)
    error_lines = [l for l in ax.lines if np.isnan(np.asarray(l.get_ydata(), dtype=float)).any()]
    spans = sorted(float(np.nanmax(l.get_ydata()) - np.nanmin(l.get_ydata())) for l in error_lines)
    assert spans == pytest.approx(sorted([2 * np.std([50, 52, 54], ddof=1), 2 * np.std([60, 61, 65], ddof=1)]), abs=1e-3)
    with pytest.raises(KeyError, match="none of the metric columns"):
        F.ablation_bars(runs, metrics=["test.AR@10"])


def test_curvature_plot_reads_the_report_sweep() -> None:
    from distilvpr_lib.analysis.report import curvature_sweep

    runs = pd.DataFrame([{"status": "ok", "variation": f"c{c}", "param.method": "distilvpr", "param.curvature": c,
                          "test.AR@1": 50 + 10 * c + seed, "test.AR@5": 70.0 + seed}
                         for c in (0.01, 0.1, 1.0) for seed in (1, 2)])
    fig = F.curvature_plot(curvature_sweep(runs))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["test.AR@1", "test.AR@5"]
    means = ax.containers[0].lines[0].get_ydata()
    assert list(np.round(means, 6)) == [51.6, 52.5, 61.5] and ax.get_xscale() == "log"


# ---------------------------------------------------------------------------
# Retrieval pictures
# ---------------------------------------------------------------------------
def test_draw_retrieval_frames_follow_the_match_flags() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (12, 16, 3), dtype=np.uint8) for _ in range(4)]
    matches = [True, False, False, True]
    fig = R.draw_retrieval(images[0], images, [0.1, 0.2, 0.3, 0.4], matches)
    assert len(fig.axes) == 5
    for ax, good in zip(fig.axes[1:], matches):
        assert _spine_colours(ax) == {_rgba(MATCH_COLOUR if good else MISS_COLOUR)}
        assert ax.get_gid().endswith("match" if good else "miss")
    assert "d=0.300" in fig.axes[3].get_title()
    with pytest.raises(ValueError, match="3 distances"):
        R.draw_retrieval(images[0], images, [0.1, 0.2, 0.3], matches)


def test_query_view_and_pictures_agree_with_the_results(benchmark: Benchmark, results: dict) -> None:
    res = results["distilvpr student"]
    (i, j), pair = next(iter(res.retrievals.items()))
    q = int(pair.query_indices[0])
    view = Q.query_view(benchmark, res, i, j, q, top_k=4)
    truth = set(benchmark.query_sets("test")[j][q][i])
    assert view.true_neighbours.tolist() == sorted(truth)
    assert view.matches.tolist() == [int(x) in truth for x in view.retrieved_indices]
    assert (view.place_distances_m[view.matches] <= 25.0 + 1e-6).all()
    assert view.retrieved_rels == [benchmark.database_sets("test")[i][int(x)]["query"] for x in view.retrieved_indices]
    fig, map_fig, views = R.render_query(benchmark, results, i, j, q, top_k=4)
    assert len(views) == 2 and len(fig.axes) == 2 * 5  # one row per model: query + 4
    student_row = fig.axes[5:]
    for ax, good in zip(student_row[1:], view.matches):
        assert _spine_colours(ax) == {_rgba(MATCH_COLOUR if good else MISS_COLOUR)}
    with pytest.raises(KeyError, match="not evaluated"):
        Q.query_view(benchmark, res, i, j, len(benchmark.query_sets("test")[j]) + 5)


def test_retrieval_map_marks_query_neighbours_and_retrieved() -> None:
    db = np.array([[0.0, 0.0], [0.0, 10.0], [0.0, 100.0], [50.0, 50.0]])
    fig = R.draw_retrieval_map(db, (0.0, 5.0), [0, 1], {"a": [1, 2], "b": [3, 0]},
                               {"a": [True, False], "b": [False, True]})
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any(l.startswith("true neighbours") and "(2)" in l for l in labels)
    assert sum(l.startswith("retrieved by") for l in labels) == 2
    with pytest.raises(ValueError, match="outside the database"):
        R.draw_retrieval_map(db, (0.0, 5.0), [0], [7], [False])


def test_select_queries_is_deterministic_and_half_wrong(results: dict) -> None:
    chosen = Q.select_queries(results, 4, student="distilvpr student")
    assert chosen == Q.select_queries(results, 4, student="distilvpr student") and len(chosen) == 4
    wrong = {(i, j, q) for (i, j) in results["distilvpr student"].retrievals
             for q in Q.wrong_queries(results["distilvpr student"], i, j).tolist()}
    assert len(wrong) >= 2, "the noisy stand-in must make mistakes for this test to mean something"
    assert sum(c in wrong for c in chosen) == 2
    assert Q.default_student(["teacher", "no-KD", "DistilVPR"]) == "DistilVPR"


def test_render_queries_and_report(benchmark: Benchmark, results: dict, tmp_path: Path) -> None:
    chosen = Q.select_queries(results, 2)
    records = R.render_queries(benchmark, results, chosen, tmp_path, top_k=3)
    for record in records:
        assert Path(record["retrieval_png"]).read_bytes().startswith(PNG_MAGIC)
        assert Path(record["map_png"]).is_file()
        assert set(record) >= {"correct@1/teacher", "correct@1/distilvpr student"}
    report = Q.retrieval_report(results, records)
    path = write_metrics(tmp_path, report)
    back = json.loads(path.read_text())
    n_wrong = sum(len(Q.wrong_queries(results["teacher"], i, j)) for i, j in results["teacher"].retrievals)
    assert back["models"]["teacher"]["wrong at top-1"] == n_wrong
    assert back["models"]["teacher"]["AR@1"] == pytest.approx(results["teacher"].recall_at(1))


def test_results_of_another_split_are_refused(benchmark: Benchmark, results: dict) -> None:
    with pytest.raises(ValueError, match="differ from the 'validation' split"):
        RR.check_results(results, benchmark, "validation")


# ---------------------------------------------------------------------------
# The browser, without a browser
# ---------------------------------------------------------------------------
def test_browser_state_follows_the_query_widgets(benchmark: Benchmark, results: dict) -> None:
    browser = B.RetrievalBrowser(benchmark, results, top_k=3)
    state = browser.state
    i, j = state["database_run"], state["query_run"]
    queries = Q.evaluated_queries(results["teacher"], i, j).tolist()
    assert state["n_queries"] == len(queries) >= 2 and state["query_index"] == queries[0]
    first_image, first_picture = bytes(browser.query_image.value), bytes(browser.retrieval_image.value)
    assert first_image.startswith(PNG_MAGIC) and first_picture.startswith(PNG_MAGIC)

    browser.query_slider.value = 1  # as a user moving the slider
    assert browser.state["query_index"] == queries[1] == browser.query_dropdown.value
    assert bytes(browser.query_image.value) != first_image and bytes(browser.retrieval_image.value) != first_picture
    expected_rel = benchmark.query_sets("test")[j][queries[1]]["query"]
    assert browser.state["query_rel"] == expected_rel
    assert bytes(browser.query_image.value) == Path(benchmark.image_path(expected_rel)).read_bytes()

    browser.query_dropdown.value = queries[0]  # the dropdown moves the slider back
    assert browser.query_slider.value == 0 and bytes(browser.query_image.value) == first_image

    state = browser.select(compare=True)
    assert state["shown_models"] == ["teacher", "distilvpr student"]

    state = browser.select(wrong_only=True)
    wrong = Q.wrong_queries(results["distilvpr student"], i, j).tolist()
    assert [v for _, v in browser.query_dropdown.options] == wrong
    if wrong:
        assert state["correct_at_1"]["distilvpr student"] is False
    with pytest.raises(ValueError, match="not selectable"):
        browser.select(query_index=max(queries) + 1000)

    other = next(r for r in range(len(browser.run_names)) if r != i)
    browser.select(database_run=other, wrong_only=False)
    assert other not in [v for _, v in browser.query_run.options]
    assert browser.state["database_run"] == other and browser.state["query_run"] != other


def test_browser_on_the_real_oxford_fixture_shows_clouds_when_there_are_no_images(oxford_real_dir: Path) -> None:
    from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval

    benchmark = Benchmark.load(oxford_real_dir)
    assert not benchmark.has_images

    def occupancy(run_set):  # a non-learned bird's-eye occupancy descriptor (test-only stand-in)
        return np.asarray([np.histogram2d(*benchmark.read_cloud(run_set[k]["query"])[:, :2].T, bins=8,
                                          range=[[-1, 1], [-1, 1]])[0].ravel() for k in range(len(run_set))],
                          dtype=np.float32)

    res = evaluate_retrieval([occupancy(s) for s in benchmark.database_sets("test")],
                             [occupancy(s) for s in benchmark.query_sets("test")], benchmark.query_sets("test"),
                             top_k=3, run_names=benchmark.set_run_names("test"))
    browser = B.RetrievalBrowser(benchmark, {"occupancy": res}, top_k=3)
    first = bytes(browser.query_image.value)
    assert first.startswith(PNG_MAGIC) and browser.state["query_rel"].endswith(".bin")
    browser.query_slider.value = 1
    assert bytes(browser.query_image.value) != first
    assert R.ImageSource(benchmark).array(browser.state["query_rel"]).shape == (160, 160, 3)
