"""``distilvpr batch GRID.yaml``: run a papermill grid (resumable, failure-isolated, stoppable).

Exit status: 0 every run ok or skipped; 1 a run failed or is stale (completed with other parameters than
the grid's now; ``--rerun-stale`` re-runs them); 2 a bad grid (unknown or wrong-typed parameter, duplicate
key, ...: nothing ran); 128 + the signal when SIGINT (130) or SIGTERM (143) stopped it (re-run to resume).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("batch", help="run a parameterised notebook grid with papermill",
                              description="Run every variation x seed of a grid file with papermill into "
                                          "OUT/<batch>/<run>/; completed runs are skipped on re-run, runs "
                                          "completed with other parameters are reported stale. The grid is "
                                          "checked against the notebook's parameters first (docs/GRIDS.md). "
                                          "Ctrl-C or SIGTERM stops it: no new run starts, running ones are "
                                          "recorded 'interrupted' and resume when the batch is re-run.")
    p.add_argument("grid", help="grid YAML file (see ablations/)")
    p.add_argument("--out", default="runs", help="root folder of batches (default: runs)")
    p.add_argument("--workers", type=int, default=1, help="parallel notebook executions (default 1)")
    p.add_argument("--only", nargs="*", help="run only runs whose name starts with one of these")
    p.add_argument("--force", action="store_true", help="re-run completed runs too (stale ones moved aside first)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="re-run stale runs (completed with other parameters than the grid's now): their folders "
                        "are moved to OUT/<batch>/.stale/ and the runs start over")
    p.add_argument("--timeout", type=float, default=None, help="per-cell execution timeout in seconds")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distilvpr_lib.batch import run_batch

    summary = run_batch(args.grid, out_root=args.out, workers=args.workers, force=args.force,
                        only=args.only, timeout_s=args.timeout, rerun_stale=args.rerun_stale)
    print(summary, flush=True)
    if summary.signum is not None:
        return 128 + summary.signum
    return 1 if summary.n_failed or summary.n_stale else 0
