"""The ``distilvpr`` command line.

Each subcommand lives in ``distilvpr_lib/commands/<name>.py`` and exposes
``register(subparsers) -> None`` which adds its parser and sets ``func`` (a callable
taking the parsed ``argparse.Namespace`` and returning an exit status).
Subcommand modules are imported only when the CLI runs, never at package import.

This is the project's one error boundary: any exception a subcommand raises is printed as one line,
``error: <file>: <problem> (<what to do>)`` (:func:`distilvpr_lib.errors.format_error`), and the exit
status is 1 for bad data, weights or run folders, 2 for bad options (argparse's own errors too).
The traceback is printed only with ``--debug`` (anywhere on the command line) or ``DISTILVPR_DEBUG=1``.
Ctrl-C (SIGINT) and SIGTERM stop a command alike: one line ``error: interrupted``, exit 130 / 143, and a
training run records ``status: interrupted`` in its ``metrics.json`` (re-running it resumes).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence

#: Subcommand modules, in the order shown by ``distilvpr --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "check_data",
    "prepare_data",
    "synth",
    "pretrain_image",
    "train_teacher",
    "distill",
    "evaluate",
    "batch",
    "benchmark",
    "study_table",
    "train",
    "import_teacher",
    "listing",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distilvpr",
        description="DistilVPR workbench: data, teacher, distillation, evaluation and batches. "
                    "'distilvpr list methods|terms|presets|profiles|config' lists what the options accept.",
        epilog="Exit status: 0 success, 1 bad data / weights / run folder, 2 bad options. Errors are one line; "
               "--debug (anywhere) or DISTILVPR_DEBUG=1 adds the traceback.",
    )
    from distilvpr_lib import __version__

    parser.add_argument("--version", action="version", version=f"distilvpr {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="print the traceback of an error (also: DISTILVPR_DEBUG=1; accepted after the command)")
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
    """Entry point of the ``distilvpr`` console script; returns the exit status (0, 1 or 2).

    Errors are caught here and printed as one line on stderr (see the module docstring); with
    ``--debug`` / ``DISTILVPR_DEBUG=1`` the traceback comes first.
    """
    from distilvpr_lib.errors import debug_requested, exit_code_for, format_error, signal_name

    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(arguments)
    arguments = [a for a in arguments if a != "--debug"]
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        if debug:
            traceback.print_exc()
        signum = getattr(exc, "signum", signal.SIGINT)
        print("error: interrupted" if signum == signal.SIGINT else f"error: interrupted by {signal_name(signum)}",
              file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # noqa: BLE001 - the one error boundary of the CLI
        if debug:
            traceback.print_exc()
        print(f"error: {format_error(exc)}", file=sys.stderr)
        return exit_code_for(exc)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While active, SIGTERM (what a cluster scheduler sends) raises :class:`~distilvpr_lib.errors.RunInterrupted`,
    a ``KeyboardInterrupt``: a run stops as on Ctrl-C (``status: interrupted`` in its ``metrics.json``, resumable)
    and the CLI exits 143 with one line. The previous handler is restored on exit (main thread only)."""
    from distilvpr_lib.errors import RunInterrupted

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise RunInterrupted(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover - `python -m distilvpr_lib.cli`
    sys.exit(main())
