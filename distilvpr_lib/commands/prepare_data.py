"""``distilvpr prepare-data DIR [--layout oxford|boreas] [--force] [--validation-fraction F]``.

Builds the benchmark pickles of a real dataset folder by the PointNetVLAD rules plus the validation split
that model selection needs (:func:`distilvpr_lib.data.prepare.prepare_benchmark`), keeps the authors' files
untouched unless ``--force`` (a rebuilt set that differs is written beside them) and prints what it built.
"""

from __future__ import annotations

import argparse

from distilvpr_lib.config import LAYOUTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare-data`` subcommand."""
    parser = subparsers.add_parser(
        "prepare-data",
        help="build the pickles and the validation split of a real dataset folder (PointNetVLAD rules)",
        description="Build training tuples, test sets and a validation split from the per-run location CSVs of "
                    "a real Oxford RobotCar folder. Existing benchmark files are kept (a rebuilt set that differs "
                    "is written beside them as <name>.rebuilt.pickle) unless --force.",
    )
    parser.add_argument("dataset_dir", help="the dataset folder (holding oxford/<run>/...)")
    parser.add_argument("--layout", default="oxford", choices=LAYOUTS,
                        help="layout of the source data (default %(default)s)")
    parser.add_argument("--force", action="store_true",
                        help="replace existing benchmark pickles that differ from the rebuilt ones")
    parser.add_argument("--validation-fraction", type=float, default=None,
                        help="share of the training region held out for validation (default: the config's)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prepare the folder and print the report; 0 on success (errors go to the CLI's error boundary)."""
    from distilvpr_lib.data.prepare import prepare_benchmark

    report = prepare_benchmark(args.dataset_dir, layout=args.layout, force=args.force,
                               validation_fraction=args.validation_fraction)
    print("\n".join(report.lines()))
    return 0
