"""``distilvpr study-table RUNS_CSV [--baseline NAME] [--csv OUT]``.

Recomputes the study table (mean ± std per variation, Δ AR@1 to a baseline paired by seed with its 95 %
bootstrap interval, paired t and Wilcoxon) from a committed per-run CSV (``docs/study/**/study_runs.csv``),
against any baseline in it, without the run folders. Prints it as markdown; ``--csv`` also writes it.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``study-table`` subcommand."""
    parser = subparsers.add_parser(
        "study-table",
        help="recompute a study table from a per-run CSV (docs/study/**/study_runs.csv), against any baseline",
        description="The study table from a per-run CSV: per variation mean ± std of the test metrics "
                    "and Δ AR@1 to the baseline, paired by seed (95 % BCa bootstrap interval, paired t, "
                    "Wilcoxon). Printed as markdown.",
    )
    parser.add_argument("runs_csv", help="a per-run study CSV (notebook 04 writes study_runs.csv)")
    parser.add_argument("--baseline", default="nokd",
                        help="the variation every other is paired with (default: nokd; e.g. nokd_norm for the "
                             "rows trained with the normalised task)")
    parser.add_argument("--csv", default=None, metavar="OUT", help="also write the table to this CSV file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Read the CSV (checked before anything is written), print the table; 0 on success."""
    from distilvpr_lib.data.files import atomic_write
    from distilvpr_lib.analysis.report import study_table
    from distilvpr_lib.analysis.run_records import read_recorded_runs
    from distilvpr_lib.errors import DataFormatError

    runs = read_recorded_runs(args.runs_csv)
    variations = sorted(set(runs["variation"]))
    if args.baseline not in variations:
        raise DataFormatError(f"no run of the baseline {args.baseline!r} (variations: {', '.join(variations)})",
                              path=args.runs_csv, hint="choose --baseline among them")
    table = study_table(runs, baseline=args.baseline)
    if args.csv:
        with atomic_write(args.csv, "w", encoding="utf-8") as f:
            table.to_csv(f)
    print(table.to_markdown())
    return 0
