"""``distilvpr benchmark {plan,run,status,answer,verify} [SPEC]``: the benchmark of docs/benchmark/PROTOCOL.md, run
from one spec file (default ``ablations/benchmark.yaml``; see :mod:`distilvpr_lib.benchmark`).

    distilvpr benchmark plan                      stages and cells (run names), counts, what is done
    distilvpr benchmark run [--stage S ...]       setup -> tune -> choose -> final -> collect -> report (resumable)
    distilvpr benchmark status                    done / running / missing per stage
    distilvpr benchmark answer [--check README]   the README's ten-line answer + main table, from the records
    distilvpr benchmark verify SPEC CELL ...      re-run cells from scratch, compare with their committed rows

A bad spec is one line naming the file and the key (exit 2), before anything is written.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_SPEC = "ablations/benchmark.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``benchmark`` subcommand and its own subcommands."""
    from distilvpr_lib.benchmark import STAGES

    parser = subparsers.add_parser(
        "benchmark", help="the pre-registered benchmark (docs/benchmark/PROTOCOL.md): plan, run, status, answer, verify",
        description="Run the benchmark declared in a spec file (default ablations/benchmark.yaml), stage by stage.")
    sub = parser.add_subparsers(dest="benchmark_command", metavar="SUBCOMMAND")
    spec_help = f"benchmark spec (default {DEFAULT_SPEC}, relative to the project root)"
    p = sub.add_parser("plan", help="print the stages and cells with counts and what is done")
    p.add_argument("spec", nargs="?", default=None, help=spec_help)
    p = sub.add_parser("run", help="run the stages (resumable; each skips what is done)")
    p.add_argument("spec", nargs="?", default=None, help=spec_help)
    p.add_argument("--stage", nargs="+", choices=STAGES, default=None,
                   help=f"stages to run, in the order given (default: all: {' '.join(STAGES)})")
    p.add_argument("--workers", type=int, default=None, help="student runs side by side (default: the spec's)")
    p = sub.add_parser("status", help="done / running / missing per stage")
    p.add_argument("spec", nargs="?", default=None, help=spec_help)
    p = sub.add_parser("answer", help="print the README's answer and main table, generated from the records")
    p.add_argument("spec", nargs="?", default=None, help=spec_help)
    p.add_argument("--check", metavar="README", default=None,
                   help="exit 1 when the README's block between the benchmark markers differs from the answer")
    p = sub.add_parser("verify", help="re-run cells from scratch into a temporary folder and compare with the records")
    p.add_argument("spec", help="benchmark spec")
    p.add_argument("cells", nargs="+", metavar="CELL", help="<world>/[tune|final/]<row>__seed<k>")
    parser.set_defaults(func=run, benchmark_parser=parser)


def run(args: argparse.Namespace) -> int:
    """Dispatch; errors propagate to the CLI's boundary (one line, exit 1 or 2)."""
    from pathlib import Path

    from distilvpr_lib import benchmark as bench
    from distilvpr_lib.paths import project_path, project_root

    if not args.benchmark_command:
        args.benchmark_parser.print_help()
        return 2
    spec_path = Path(args.spec) if args.spec else project_path(DEFAULT_SPEC)
    spec = bench.load_spec(spec_path)
    root = project_root()
    if args.benchmark_command == "plan":
        print("\n".join(bench.plan_lines(spec, root)))
    elif args.benchmark_command == "status":
        print("\n".join(bench.status_lines(spec, root)))
    elif args.benchmark_command == "run":
        if args.workers is not None and args.workers < 1:
            print("error: --workers must be >= 1", file=sys.stderr)
            return 2
        bench.run_stages(spec, root, args.stage, args.workers)
    elif args.benchmark_command == "answer":
        if args.check:
            if not bench.check_readme(spec, root, args.check):
                print(f"error: {args.check}: the block between {bench.README_BEGIN} and {bench.README_END} differs "
                      f"from `distilvpr benchmark answer {spec_path}` (paste its output there)", file=sys.stderr)
                return 1
            print(f"{args.check}: the benchmark block matches the records")
        else:
            print(bench.answer(spec, root))
    elif args.benchmark_command == "verify":
        return 0 if bench.verify(spec, root, args.cells) else 1
    return 0
