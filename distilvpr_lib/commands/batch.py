"""``distilvpr batch GRID.yaml``: run a papermill grid (resumable, failure-isolated, stoppable), here or on a cluster.

Exit status: 0 every run ok or skipped; 1 a run this launcher executed failed, or a run is stale (completed with
other parameters than the grid's now; ``--rerun-stale`` re-runs them); 2 a bad grid or option (unknown or
wrong-typed parameter, duplicate key, ...: nothing ran); 128 + the signal when SIGINT (130) or SIGTERM (143)
stopped it (re-run to resume).
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch", help="run a parameterised notebook grid with papermill",
        description="Run every variation x seed of a grid file with papermill into OUT/<batch>/<run>/; completed "
                    "runs are skipped on re-run, runs completed with other parameters are reported stale. The grid "
                    "is checked against the notebook's parameters first (docs/GRIDS.md). Each run is claimed "
                    "through its folder before it starts, so any number of launchers (or job-array tasks) can share "
                    "one grid folder: a run claimed elsewhere is reported 'running elsewhere', never failed; "
                    "batch.json is rebuilt from the runs' folders. Ctrl-C or SIGTERM stops it: no new run starts, "
                    "running ones are recorded 'interrupted' and resume when the batch is re-run.",
        epilog="Executors: local (threads here, --workers at a time), dask-local (a Dask LocalCluster of --workers "
               "processes), dask (a running dask.distributed scheduler, --scheduler tcp://HOST:PORT; workers need "
               "--resources run=K). Job arrays without Dask: --list prints the runs, --index K runs the K-th "
               "(0-based: sbatch --array=0-(N-1) passes $SLURM_ARRAY_TASK_ID); see docs/slurm_array.sh. "
               "Exit status: 0 every run this launcher executed succeeded, 1 one failed or is stale, 2 bad options, "
               "130/143 stopped by SIGINT/SIGTERM.")
    p.add_argument("grid", help="grid YAML file (see ablations/)")
    p.add_argument("--out", default="runs", help="root folder of batches (default: runs)")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel runs: threads (local) or worker processes (dask-local) (default 1)")
    p.add_argument("--executor", default="local", choices=("local", "dask", "dask-local"),
                   help="where the runs execute (default local)")
    p.add_argument("--scheduler", default=None, help="address of a running Dask scheduler (--executor dask)")
    p.add_argument("--only", nargs="*", help="run only runs whose name starts with one of these")
    p.add_argument("--list", action="store_true", help="print the (selected) run names, one per line, and exit")
    p.add_argument("--index", type=int, default=None,
                   help="run only the K-th (0-based) of the runs --list prints (a job-array task: "
                        "--index $SLURM_ARRAY_TASK_ID)")
    p.add_argument("--force", action="store_true", help="re-run completed runs too (stale ones moved aside first)")
    p.add_argument("--rerun-stale", action="store_true",
                   help="re-run stale runs (completed with other parameters than the grid's now): their folders "
                        "are moved to OUT/<batch>/.stale/ and the runs start over")
    p.add_argument("--timeout", type=float, default=None, help="per-cell execution timeout in seconds")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import sys

    from distilvpr_lib.batch import Grid, GridError, run_batch, select_runs
    from distilvpr_lib.errors import OptionError

    try:
        if args.workers < 1:
            raise OptionError(f"--workers {args.workers}: must be at least 1")
        if args.index is not None and args.executor != "local":
            raise OptionError(f"--index runs one run in this process; it takes no --executor {args.executor}")
        if args.list:
            for spec in select_runs(Grid.load(args.grid), only=args.only, index=args.index):
                print(spec.name)
            return 0
        summary = run_batch(args.grid, out_root=args.out, workers=args.workers, force=args.force,
                            only=args.only, timeout_s=args.timeout, executor=args.executor,
                            scheduler=args.scheduler, index=args.index, rerun_stale=args.rerun_stale)
    except GridError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary, flush=True)
    if summary.signum is not None:
        return 128 + summary.signum
    return 1 if summary.n_failed or summary.n_stale else 0
