"""The ``distilvpr`` command line.

Each subcommand lives in ``distilvpr_lib/commands/<name>.py`` and exposes
``register(subparsers) -> None`` which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit status).
Subcommand modules are imported only when the CLI runs, never at package import.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: Subcommand modules, in the order shown by ``distilvpr --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "check_data",
    "synth",
    "train_teacher",
    "distill",
    "evaluate",
    "batch",
    "train",
    "import_teacher",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilvpr",
        description="DistilVPR workbench: data, teacher, distillation, evaluation and batches.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"distilvpr_lib.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"distilvpr_lib.commands.{name}":
                continue  # subcommand not built yet
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``distilvpr`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover - `python -m distilvpr_lib.cli`
    sys.exit(main())
