"""Write the workbook's notebooks (without outputs) from their cell lists.

The notebooks in ``notebooks/`` are the product; this script is how they are kept tidy and
reviewable: each notebook is one function returning its cells. Run it after editing a builder:

    .venv/bin/python scripts/build_notebooks.py            # all notebooks
    .venv/bin/python scripts/build_notebooks.py 03         # only those whose name starts with 03

Every notebook has one cell tagged ``parameters`` (papermill) with an ``out`` parameter, the run
folder where it writes its figures and a ``metrics.json``. Logic lives in ``distilvpr_lib``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS_DIR = ROOT / "notebooks"

Cell = tuple[str, str]  # (kind, source) with kind in {"md", "code", "params"}
BUILDERS: dict[str, Callable[[], list[Cell]]] = {}


def notebook(name: str) -> Callable[[Callable[[], list[Cell]]], Callable[[], list[Cell]]]:
    def deco(fn: Callable[[], list[Cell]]) -> Callable[[], list[Cell]]:
        BUILDERS[name] = fn
        return fn

    return deco


SETUP = """\
%matplotlib inline
from pathlib import Path
import json
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display, Markdown
"""


@notebook("02_teacher_training")
def teacher_training() -> list[Cell]:
    return [
        ("md", "# 02 — Teacher training (MinkLoc++ `minklocmmcat`)\n\n"
               "Trains the multi-modal teacher — sparse 3D convolutions on the LiDAR submap (MinkFPN + GeM, "
               "128-d) and ResNet18 on the image (256-d), concatenated (384-d) — with the batch-hard triplet "
               "loss `0.5·L(fused) + 0.5·L(cloud)`. The epoch is selected on the **validation** split; the "
               "selected teacher is reported on the **test** split (the Oxford test squares) and its training-set "
               "embeddings are cached for notebook 03. Re-running resumes from the last checkpoint."),
        ("params", "dataset = 'data/cpu'          # dataset folder (Oxford layout; generated or real)\n"
                   "image_dir = None              # None: <dataset>/images\n"
                   "profile = 'cpu'               # smoke | cpu | paper\n"
                   "backend = 'torch'             # sparse backend: torch | minkowski\n"
                   "epochs = None                 # None: the profile's\n"
                   "seed = 7\n"
                   "overrides = {}                # extra config overrides, e.g. {'train.batch_size': 64}\n"
                   "teacher_dir = 'teacher_weights/cpu'  # the teacher folder (weights, config, metrics, cache)\n"
                   "out = 'runs/teacher-cpu'      # run folder: figures and a copy of the metrics"),
        ("code", SETUP + "from distilvpr_lib.config import profile_config, apply_overrides\n"
                         "from distilvpr_lib.engine.teacher_run import train_teacher\n"
                         "from distilvpr_lib.paths import project_path\n"
                         "from distilvpr_lib.viz import figures\n"
                         "dataset, image_dir = project_path(dataset), project_path(image_dir)\n"
                         "teacher_dir, out = project_path(teacher_dir), project_path(out)"),
        ("code", "cfg = profile_config(profile)\n"
                 "cfg = apply_overrides(cfg, {'data.dataset_dir': dataset, 'data.image_dir': image_dir,\n"
                 "                            'model.sparse_backend': backend, 'train.seed': seed,\n"
                 "                            **({'train.epochs': epochs} if epochs else {}), **overrides})\n"
                 "print(cfg.to_json())"),
        ("code", "metrics = train_teacher(cfg, teacher_dir)\n"
                 "Path(out).mkdir(parents=True, exist_ok=True)\n"
                 "(Path(out) / 'metrics.json').write_text(json.dumps(metrics, indent=2))"),
        ("md", "## Training curves and validation recall"),
        ("code", "fig = figures.training_curves(metrics)\n"
                 "fig.savefig(Path(out) / 'teacher_curves.png', dpi=100, bbox_inches='tight')"),
        ("md", "## Test results of the selected teacher"),
        ("code", "display(pd.DataFrame([metrics['test']]).round(2))\n"
                 "print('selected epoch (validation AR@1):', metrics.get('best_epoch'))"),
        ("md", "## The modality gap: fused vs cloud-only vs image-only heads\n\n"
               "The same test protocol (every ordered run pair, AR@N and exact AR@1%) on each head of the selected "
               "teacher, from one embedding pass. The image-only head is what a camera-only system gets without "
               "distillation from this teacher; the gap to the fused head is what notebook 03 tries to close. "
               "The table is added to the run's `metrics.json` under `heads`."),
        ("code", "import numpy as np\n"
                 "from distilvpr_lib.engine.run_evaluation import evaluate_heads, head_split_embeddings, load_benchmark\n"
                 "from distilvpr_lib.engine.run_folder import load_model_from_dir\n"
                 "benchmark = load_benchmark(cfg)\n"
                 "teacher, _, _ = load_model_from_dir(teacher_dir, metrics['device'])\n"
                 "head_embeddings = head_split_embeddings(teacher, benchmark, 'test', cfg, metrics['device'])\n"
                 "heads = evaluate_heads(teacher, benchmark, 'test', cfg, metrics['device'], "
                 "embeddings=head_embeddings)\n"
                 "display(heads.round(2))\n"
                 "metrics['heads'] = {head: {k: float(v) for k, v in row.items()} "
                 "for head, row in heads.to_dict(orient='index').items()}\n"
                 "(Path(out) / 'metrics.json').write_text(json.dumps(metrics, indent=2))"),
        ("md", "## Embedding projection of the test database (fused head)\n\n"
               "PCA of the L2-normalised fused embeddings of every test database sub-map, coloured by the sub-map's "
               "position along the route: the same place in different runs should land together."),
        ("code", "database_sets = benchmark.database_sets('test')\n"
                 "fused = np.concatenate(head_embeddings['embedding'][0])\n"
                 "positions = np.array([[s[k]['northing'], s[k]['easting']] for s in database_sets "
                 "for k in range(len(s))])\n"
                 "fig = figures.embedding_projection(fused, positions, title='teacher (fused), test database')\n"
                 "fig.savefig(Path(out) / 'teacher_projection.png', dpi=100, bbox_inches='tight')\n"
                 "fig"),
    ]


@notebook("03_distillation")
def distillation() -> list[Cell]:
    return [
        ("md", "# 03 — DistilVPR: distilling the teacher into an image-only student\n\n"
               "The student (ResNet18 up to layer3 → 1×1 conv 384 → GeM) is trained on images only, with the "
               "task loss `0.5·L_tri(s)` plus the distillation terms of the chosen method, against the teacher's "
               "**cached** embeddings (no teacher forward, no sparse backend). `method='distilvpr'` is the full "
               "objective of the paper (Oxford: 10·RKD-G + 0.1·(Euclidean + spherical + hyperbolic) st2ss); "
               "`nokd` is the student without distillation. Selection on validation, report on test."),
        ("params", "dataset = 'data/cpu'\n"
                   "image_dir = None\n"
                   "teacher = 'teacher_weights/cpu'   # teacher folder written by notebook 02\n"
                   "profile = 'cpu'\n"
                   "method = 'distilvpr'               # nokd | distilvpr | a baseline (kd, rkd, pkt, ...)\n"
                   "terms = {}                         # explicit term weights overriding the preset\n"
                   "curvature = 0.1\n"
                   "epochs = None\n"
                   "seed = 0\n"
                   "overrides = {}\n"
                   "compare_with = []                 # other run folders to put in the final table (e.g. no-KD)\n"
                   "out = 'runs/distill-cpu'"),
        ("code", SETUP + "from distilvpr_lib.config import profile_config, apply_overrides\n"
                         "from distilvpr_lib.engine.student_run import distill_student\n"
                         "from distilvpr_lib.engine.report import comparison_table, embedding_norm_table\n"
                         "from distilvpr_lib.paths import project_path\n"
                         "from distilvpr_lib.viz import figures\n"
                         "dataset, image_dir = project_path(dataset), project_path(image_dir)\n"
                         "teacher, out = project_path(teacher), project_path(out)\n"
                         "compare_with = [project_path(p) for p in compare_with]"),
        ("code", "cfg = profile_config(profile)\n"
                 "cfg = apply_overrides(cfg, {'data.dataset_dir': dataset, 'data.image_dir': image_dir,\n"
                 "                            'distill.method': method, 'distill.terms': dict(terms),\n"
                 "                            'distill.curvature': curvature, 'train.seed': seed,\n"
                 "                            **({'train.epochs': epochs} if epochs else {}), **overrides})\n"
                 "print(cfg.to_json())"),
        ("code", "metrics = distill_student(cfg, teacher, out)"),
        ("md", "## Every named loss term over time, and validation recall per epoch"),
        ("code", "fig = figures.training_curves(metrics)\n"
                 "fig.savefig(Path(out) / 'student_curves.png', dpi=100, bbox_inches='tight')"),
        ("md", "## Test: teacher vs other students vs this student\n\n"
               "AR@N and AR@1% averaged over all (database run, query run) pairs of the test split; per-run AR@1 is "
               "the mean over query runs for each database run."),
        ("code", "table = comparison_table({'teacher': teacher, **{Path(p).name: p for p in compare_with}, "
                 "f'student ({method})': out})\n"
                 "display(table.round(2))"),
        ("md", "## Embedding norms\n\nThe hyperbolic self-agent term maps *raw* embeddings into the Poincaré ball; "
               "with c = 0.1, norms above ≈ 7 land at the boundary where geodesic distances saturate "
               "(METHOD.md §10.5). The table shows whether that happens here."),
        ("code", "display(embedding_norm_table(metrics, curvature=curvature).round(3))"),
    ]


@notebook("04_ablation_analysis")
def ablation_analysis() -> list[Cell]:
    return [
        ("md", "# 04 — Ablation analysis\n\n"
               "Reads a papermill batch of notebook 03 (`distilvpr batch ablations/<grid>.yaml`) and tabulates "
               "every variation as **mean ± std over seeds** of AR@1, AR@5 and AR@1% on the **test** split, "
               "for the epoch selected on the **validation** split. Differences to no-KD use a paired t-test over "
               "seeds (runs paired by seed)."),
        ("params", "batch = 'runs/ablations-reduced'   # batch folder written by distilvpr batch\n"
                   "baseline = 'nokd'                   # variation the others are compared with\n"
                   "out = None                          # where figures go (None: the batch folder)"),
        ("code", SETUP + "from distilvpr_lib.batch import collect_batch\n"
                         "from distilvpr_lib.engine.report import (ablation_table, paired_differences,\n"
                         "                                         curvature_sweep, loss_magnitudes)\n"
                         "from distilvpr_lib.paths import project_path\n"
                         "from distilvpr_lib.viz import figures\n"
                         "batch = project_path(batch)\n"
                         "out = project_path(out) or batch"),
        ("code", "runs = collect_batch(batch)\n"
                 "out.mkdir(parents=True, exist_ok=True)\n"
                 "display(runs[['run', 'status', 'seconds']])\n"
                 "failed = runs[runs.status != 'ok']\n"
                 "if len(failed):\n    display(Markdown(f'**{len(failed)} run(s) did not finish** and are left out.'))\n"
                 "    display(failed[['run', 'error']])"),
        ("md", "## Table: mean ± std over seeds (test split, validation-selected epoch)"),
        ("code", "table = ablation_table(runs)\ndisplay(table)\ntable.to_csv(out / 'ablation_table.csv')"),
        ("md", "## Difference to no-KD, paired over seeds"),
        ("code", "diff = paired_differences(runs, baseline=baseline)\ndisplay(diff.round(3))"),
        ("code", "fig = figures.ablation_bars(runs)\nfig.savefig(out / 'ablation_bars.png', dpi=100, bbox_inches='tight')"),
        ("md", "## Curvature sweep (if the batch has one)"),
        ("code", "sweep = curvature_sweep(runs)\n"
                 "if len(sweep):\n    display(sweep)\n"
                 "    fig = figures.curvature_plot(sweep)\n    fig.savefig(out / 'curvature_sweep.png', dpi=100, bbox_inches='tight')\n"
                 "else:\n    print('no curvature variation in this batch')"),
        ("md", "## Per-term loss magnitudes at the end of training"),
        ("code", "display(loss_magnitudes(runs).round(4))"),
        ("code", "summary = {'batch': str(batch), 'n_runs': int(len(runs)), 'n_ok': int((runs.status == 'ok').sum()),\n"
                 "           'table': table.reset_index().astype(str).to_dict(orient='records')}\n"
                 "(out / 'metrics.json').write_text(json.dumps(summary, indent=2))"),
    ]


@notebook("01_data_exploration")
def data_exploration() -> list[Cell]:
    return [
        ("md", "# 01 — Data exploration\n\n"
               "A benchmark in the PointNetVLAD / MinkLoc++ layout — generated by `distilvpr synth` or the real "
               "Oxford RobotCar files — seen from every side: where the runs go and which sub-maps are training, "
               "validation and test; the same place across runs and conditions; clouds next to their images; split "
               "sizes; the realism of generated sub-maps against the real Oxford ones; and the premise of DistilVPR "
               "measured on raw data (across runs, appearance changes much more than geometry)."),
        ("params", "dataset = 'data/smoke'     # dataset folder (Oxford layout); generated when missing and generate is True\n"
                   "image_dir = None           # None: <dataset>/images\n"
                   "profile = 'smoke'          # generator profile used when generating: smoke | cpu | paper\n"
                   "seed = None                # generator seed (None: the profile's)\n"
                   "generate = True\n"
                   "runs = []                  # run names to show (empty: all)\n"
                   "max_runs = 8               # columns of the same-place grid\n"
                   "place = None               # [northing, easting] of the place to show (None: a test query)\n"
                   "real_data = '../shared/data/real/oxford_dh3d'  # real Oxford sub-maps ('' or None: skip)\n"
                   "realism_limit = 200        # clouds per dataset in the realism statistics\n"
                   "out = 'runs/01_data_exploration'"),
        ("code", SETUP + "from distilvpr_lib.commands.synth import ensure_dataset\n"
                         "from distilvpr_lib.data.benchmark import Benchmark\n"
                         "from distilvpr_lib.data.synth.stats import load_clouds, premise_table, realism_table\n"
                         "from distilvpr_lib.paths import project_path\n"
                         "from distilvpr_lib.viz import figures, save_figure, write_metrics\n"
                         "from distilvpr_lib.viz.exploration import exploration_summary, premise_verdict, realism_verdict\n"
                         "dataset, out, real_data = project_path(dataset), project_path(out), project_path(real_data)"),
        ("code", "ensure_dataset(dataset, profile=profile, seed=seed, generate=generate)\n"
                 "benchmark = Benchmark.load(dataset, image_dir=project_path(image_dir))\n"
                 "conditions = figures.load_run_conditions(dataset)\n"
                 "shown_runs = list(runs) or None\n"
                 "print(f'{dataset}: {benchmark.layout} layout, {len(benchmark.run_names)} runs, images: {benchmark.has_images}')\n"
                 "pd.DataFrame({'condition': pd.Series(conditions, dtype=str)}, index=benchmark.run_names).fillna('')"),
        ("md", "## Map of all runs\n\n"
               "Left: every sub-map, coloured by run. Right: the role of each sub-map — training tuples (blue), "
               "validation queries (orange, inside the validation squares), test queries (red, inside the PointNetVLAD "
               "test squares P1–P4); grey sub-maps are only in an evaluation database (e.g. the guard band that keeps "
               "training 50 m away from validation)."),
        ("code", "fig = figures.plot_run_map(benchmark, runs=shown_runs)\n"
                 "save_figure(fig, out / 'map.png')\n"
                 "fig"),
        ("md", "## The same place across runs and conditions\n\n"
               "One column per run: the nearest sub-map to the place, its camera image (top) and its cloud in bird's-eye "
               "view (bottom). Appearance changes with the condition; geometry barely does."),
        ("code", "northing, easting = place if place is not None else figures.default_place(benchmark)\n"
                 "fig = figures.plot_place_across_runs(benchmark, northing, easting, runs=shown_runs, conditions=conditions,\n"
                 "                                     max_runs=max_runs)\n"
                 "save_figure(fig, out / 'same_place_across_runs.png')\n"
                 "fig"),
        ("md", "## A point cloud in 3D and in bird's-eye view, next to the image of the same place"),
        ("code", "nearest = figures.nearest_submaps(benchmark, northing, easting, runs=shown_runs)\n"
                 "fig = figures.plot_submap(benchmark, nearest.rel_path.iloc[0])\n"
                 "save_figure(fig, out / 'cloud_and_image.png')\n"
                 "fig"),
        ("md", "## Split sizes, positives and non-negatives\n\n"
               "Training tuples have *positives* within 10 m and *non-negatives* within 50 m (PointNetVLAD rules); "
               "a tuple without positives cannot be an anchor in a batch."),
        ("code", "display(figures.split_size_table(benchmark))\n"
                 "fig = figures.plot_split_sizes(benchmark)\n"
                 "save_figure(fig, out / 'split_sizes.png')\n"
                 "fig"),
        ("md", "## Realism against the real Oxford sub-maps\n\n"
               "Medians of per-sub-map statistics (unique voxels at 0.01, mean nearest-neighbour distance, z spread, "
               "|max| per axis) of the generated evaluation sub-maps against the real Oxford fixture. Goal: each within "
               "15 % of the real median (green rows meet it, red rows do not)."),
        ("code", "realism = None\n"
                 "if real_data is not None and real_data.is_dir():\n"
                 "    realism = realism_table(dataset, real_data, limit=realism_limit)\n"
                 "    display(realism.round(4))\n"
                 "    fig = figures.plot_realism_table(realism.round(4), title='generated vs real Oxford sub-maps (medians)')\n"
                 "    save_figure(fig, out / 'realism_table.png')\n"
                 "display(Markdown(realism_verdict(realism)))"),
        ("md", "## Real Oxford sub-maps beside generated ones"),
        ("code", "if real_data is not None and real_data.is_dir():\n"
                 "    fig = figures.plot_real_vs_generated(load_clouds(real_data, limit=4), load_clouds(dataset, limit=4))\n"
                 "    save_figure(fig, out / 'real_vs_generated.png')\n"
                 "    display(fig)\n"
                 "else:\n"
                 "    print('no real data folder given: skipped')"),
        ("md", "## The premise, measured on raw data\n\n"
               "For the same places seen in a reference run and in every other run: how well does a simple image "
               "similarity (normalised cross-correlation of grey 16×12 thumbnails) separate same-place pairs from "
               "different-place pairs (> 50 m apart), against a simple cloud similarity (chamfer distance)? ROC AUC "
               "per run: 1 = perfect, 0.5 = chance. DistilVPR's premise is that the image AUC drops with the "
               "condition while the cloud AUC stays high."),
        ("code", "premise = premise_table(dataset) if benchmark.has_images else None\n"
                 "if premise is not None:\n"
                 "    display(premise.round(3))\n"
                 "    fig = figures.plot_premise(premise)\n"
                 "    save_figure(fig, out / 'premise.png')\n"
                 "    display(fig)\n"
                 "display(Markdown(premise_verdict(premise)))"),
        ("code", "summary = exploration_summary(benchmark, realism=realism, premise=premise, conditions=conditions)\n"
                 "write_metrics(out, summary)\n"
                 "print(json.dumps(summary['split_sizes'], indent=1))"),
    ]


@notebook("05_retrieval_browser")
def retrieval_browser() -> list[Cell]:
    return [
        ("md", "# 05 — Retrieval browser\n\n"
               "For each query of the chosen split: the query image beside its top-k retrieved database images, "
               "framed **green** when the retrieved place is a true match (within 25 m of the query) and **red** "
               "otherwise, with the embedding distance and the distance in metres; and a map of both runs marking "
               "the query, its true neighbours (25 m circle) and the retrieved places. Several models (teacher, "
               "no-KD student, DistilVPR student) can be compared on the same query.\n\n"
               "Inputs are the evaluation results written next to every model by notebooks 02/03 "
               "(`<folder>/test_results.npz`, the `RetrievalResults` of the selected epoch on the **test** split) — "
               "or any results file. A headless run (papermill) renders a fixed list of queries to PNG in `out`; "
               "the interactive browser needs a live kernel."),
        ("params", "dataset = 'data/cpu'       # benchmark folder the models were evaluated on\n"
                   "image_dir = None           # None: <dataset>/images\n"
                   "split = 'test'             # test | validation (validation re-evaluates model folders)\n"
                   "models = {}                # {label: teacher folder or student run}, e.g.\n"
                   "                           # {'teacher': 'teacher_weights/cpu', 'no-KD': 'runs/nokd', 'DistilVPR': 'runs/distilvpr'}\n"
                   "results = {}               # {label: RetrievalResults file (.npz/.json)}, used as is\n"
                   "queries = []               # [[database_run, query_run, query_index], ...]; empty: chosen automatically\n"
                   "n_queries = 4              # how many to choose (half of them ones the student gets wrong)\n"
                   "student = None             # label whose mistakes the 'wrong queries' filter uses (None: guessed)\n"
                   "top_k = 5\n"
                   "interactive = True         # build the ipywidgets browser\n"
                   "out = 'runs/05_retrieval_browser'"),
        ("code", SETUP + "from IPython.display import Image\n"
                         "from distilvpr_lib.data.benchmark import Benchmark\n"
                         "from distilvpr_lib.paths import project_path\n"
                         "from distilvpr_lib.viz import write_metrics\n"
                         "from distilvpr_lib.viz.retrieval import (RetrievalBrowser, gather_results, render_queries,\n"
                         "                                         results_table, retrieval_report, select_queries)\n"
                         "dataset, out = project_path(dataset), project_path(out)\n"
                         "models = {label: project_path(p) for label, p in models.items()}\n"
                         "results = {label: project_path(p) for label, p in results.items()}"),
        ("code", "benchmark = Benchmark.load(dataset, image_dir=project_path(image_dir))\n"
                 "all_results = gather_results(benchmark, results=results, models=models, split=split)\n"
                 "display(results_table(all_results).round(2))"),
        ("md", "## A fixed list of queries, rendered to PNG\n\n"
               "Chosen deterministically when `queries` is empty: half among the queries the student gets wrong at "
               "top-1, half among those it gets right, spread over all (database run, query run) pairs."),
        ("code", "chosen = [tuple(q) for q in queries] or select_queries(all_results, n_queries, student=student)\n"
                 "rendered = render_queries(benchmark, all_results, chosen, out, split=split, top_k=top_k)\n"
                 "for record in rendered:\n"
                 "    display(Image(filename=record['retrieval_png']), Image(filename=record['map_png'], width=420))"),
        ("md", "## Interactive browser\n\n"
               "Pick the database run, the query run and the query (slider or dropdown; ✗ marks the student's "
               "top-1 mistakes). *compare models* shows every model on the same query, one row each; *only queries "
               "… gets wrong* keeps the student's top-1 mistakes."),
        ("code", "browser = RetrievalBrowser(benchmark, all_results, split=split, top_k=top_k, student=student) "
                 "if interactive else None\n"
                 "browser"),
        ("code", "report = retrieval_report(all_results, rendered, student=student)\n"
                 "report.update(dataset=str(dataset), split=split, queries=[list(q) for q in chosen])\n"
                 "write_metrics(out, report)\n"
                 "pd.Series(report['right_wrong'], name='queries')"),
    ]


def _cell(kind: str, source: str) -> nbformat.NotebookNode:
    if kind == "md":
        return nbformat.v4.new_markdown_cell(source)
    cell = nbformat.v4.new_code_cell(source)
    if kind == "params":
        cell.metadata["tags"] = ["parameters"]
    return cell


def write_notebook(name: str, cells: list[Cell]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [_cell(k, s) for k, s in cells]
    for index, cell in enumerate(nb.cells):  # stable ids: rebuilding an unchanged notebook changes nothing
        cell.id = f"{name[:2]}-{index:02d}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    path = NOTEBOOKS_DIR / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def main(prefixes: list[str]) -> None:
    for name, builder in sorted(BUILDERS.items()):
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        print("wrote", write_notebook(name, builder()).relative_to(ROOT))


if __name__ == "__main__":
    main(sys.argv[1:])
