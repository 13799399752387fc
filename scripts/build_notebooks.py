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
                   "image_dir = None              # None = <dataset>/images\n"
                   "profile = 'cpu'               # smoke | cpu | paper\n"
                   "backend = 'torch'             # sparse backend: torch | minkowski\n"
                   "epochs = None                 # None = the profile's\n"
                   "seed = 7\n"
                   "overrides = {}                # extra config overrides, e.g. {'train.batch_size': 64}\n"
                   "out = 'teacher_weights/cpu'   # teacher folder (checkpoint, config, metrics, cache)"),
        ("code", SETUP + "from distilvpr_lib.config import profile_config, apply_overrides\n"
                         "from distilvpr_lib.engine.trainer import train_teacher\n"
                         "from distilvpr_lib.viz import figures"),
        ("code", "cfg = profile_config(profile)\n"
                 "cfg = apply_overrides(cfg, {'data.dataset_dir': dataset, 'data.image_dir': image_dir,\n"
                 "                            'model.sparse_backend': backend, 'train.seed': seed,\n"
                 "                            **({'train.epochs': epochs} if epochs else {}), **overrides})\n"
                 "print(cfg.to_json())"),
        ("code", "metrics = train_teacher(cfg, out)"),
        ("md", "## Training curves and validation recall"),
        ("code", "fig = figures.training_curves(metrics)\n"
                 "fig.savefig(Path(out) / 'teacher_curves.png', dpi=100, bbox_inches='tight')"),
        ("md", "## Test results of the selected teacher"),
        ("code", "display(pd.DataFrame([metrics['test']]).round(2))\n"
                 "print('selected epoch (validation AR@1):', metrics.get('best_epoch'))"),
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
                         "from distilvpr_lib.engine.trainer import distill_student\n"
                         "from distilvpr_lib.engine.report import comparison_table, embedding_norm_table\n"
                         "from distilvpr_lib.viz import figures"),
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
                   "out = None                          # where figures go (None = the batch folder)"),
        ("code", SETUP + "from distilvpr_lib.batch import collect_batch\n"
                         "from distilvpr_lib.engine.report import (ablation_table, paired_differences,\n"
                         "                                         curvature_sweep, loss_magnitudes)\n"
                         "from distilvpr_lib.viz import figures\n"
                         "out = Path(out or batch)\nout.mkdir(parents=True, exist_ok=True)"),
        ("code", "runs = collect_batch(batch)\n"
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
                         "from distilvpr_lib.viz import write_metrics\n"
                         "from distilvpr_lib.viz.retrieval import (RetrievalBrowser, gather_results, render_queries,\n"
                         "                                         results_table, retrieval_report, select_queries)"),
        ("code", "benchmark = Benchmark.load(dataset, image_dir=image_dir)\n"
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
