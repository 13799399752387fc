"""``distilvpr check-data DATASET_DIR [--image-dir DIR] [--layout auto|oxford|boreas] [--deep]``.

Validates a benchmark folder and prints its summary; exits 1 (naming the offending files) on any problem.
"""

from __future__ import annotations

import argparse
import sys

from distilvpr_lib.config import AUTO_LAYOUT, LAYOUTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``check-data`` subcommand."""
    parser = subparsers.add_parser(
        "check-data",
        help="validate a dataset folder (Oxford or Boreas layout) and print its summary",
        description="Check every cloud, CSV, pickle and image of a benchmark folder; exit 1 on any problem.",
    )
    parser.add_argument("dataset_dir", help="the dataset folder")
    parser.add_argument("--image-dir", default=None,
                        help="image folder (default: <dataset_dir>/images for Oxford, next to the clouds for Boreas)")
    parser.add_argument("--layout", default="auto", choices=(AUTO_LAYOUT, *LAYOUTS),
                        help="dataset layout (default %(default)s: detected from the folder's files)")
    parser.add_argument("--deep", action="store_true",
                        help="decode every image completely (default: read each image's header)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the checks; print the report; 0 when clean, else 1 and the first problem as one ``error:`` line."""
    from distilvpr_lib.data.check import check_dataset, format_report

    report = check_dataset(args.dataset_dir, image_dir=args.image_dir, layout=args.layout, deep=args.deep)
    text = format_report(report)
    if report.ok:
        print(text)
        return 0
    if report.lines:  # the summary and every problem on stdout, one line on stderr
        print(text)
    n = len(report.problems)
    more = f" (+{n - 1} more problem(s) listed above)" if n > 1 and report.lines else ""
    print(f"error: {report.problems[0]}{more}", file=sys.stderr)
    return 1
