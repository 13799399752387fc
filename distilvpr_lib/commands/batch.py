"""``distilvpr batch GRID.yaml``: run a papermill grid (resumable, failure-isolated)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("batch", help="run a parameterised notebook grid with papermill",
                              description="Run every variation x seed of a grid file with papermill into "
                                          "OUT/<batch>/<run>/; completed runs are skipped on re-run.")
    p.add_argument("grid", help="grid YAML file (see ablations/)")
    p.add_argument("--out", default="runs", help="root folder of batches (default: runs)")
    p.add_argument("--workers", type=int, default=1, help="parallel notebook executions (default 1)")
    p.add_argument("--only", nargs="*", help="run only runs whose name starts with one of these")
    p.add_argument("--force", action="store_true", help="re-run completed runs too")
    p.add_argument("--timeout", type=float, default=None, help="per-cell execution timeout in seconds")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distilvpr_lib.batch import GridError, run_batch

    try:
        summary = run_batch(args.grid, out_root=args.out, workers=args.workers, force=args.force,
                            only=args.only, timeout_s=args.timeout)
    except GridError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 1 if summary.n_failed else 0
