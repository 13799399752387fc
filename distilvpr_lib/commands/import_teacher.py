"""``distilvpr import-teacher PATH.pth --out teacher_weights/NAME [--profile P] [--set section.field=value ...]
[--backend torch|minkowski] [--experiment-name NAME] [--overwrite]``.

Converts an authors' MinkLoc++ teacher checkpoint (``r1_best_ep57_97.24.pth``) into a teacher folder
(``config.json``, ``teacher.pt``, ``import.json``, ``metrics.json``; see
:mod:`distilvpr_lib.models.reference_import`). The architecture is inferred from the tensor shapes (the
experiment name in the path is cross-checked); the other settings come from ``--profile`` (default: the
reference defaults with the experiment name's dataset) and ``--set``. Prints the inferred configuration
and every ignored key. Exit status 1 when the file cannot be imported, 2 on bad options.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from distilvpr_lib.config import PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``import-teacher`` subcommand."""
    parser = subparsers.add_parser(
        "import-teacher", help="convert an authors' teacher checkpoint (.pth) into a teacher folder",
        description="Convert a reference MinkLoc++ teacher state_dict (teacher_weights/<experiment>/models/"
                    "r1_best_ep<E>_<AR@1>.pth) into a teacher folder usable with both sparse backends.")
    parser.add_argument("path", help="the reference .pth file")
    parser.add_argument("--out", required=True, help="teacher folder to write (teacher_weights/NAME)")
    parser.add_argument("--profile", default=None,
                        help=f"settings other than the architecture ({' | '.join(PROFILES)}); default: the reference "
                             "defaults (paper) with the dataset and batch size of the experiment name")
    parser.add_argument("--set", dest="overrides", action="append", nargs="+", default=[], metavar="KEY=VALUE",
                        help="config override section.field=value (repeatable), e.g. data.dataset_dir=data/oxford")
    parser.add_argument("--backend", default=None, choices=("torch", "minkowski"),
                        help="sparse backend written to config.json (default: the profile's, torch)")
    parser.add_argument("--experiment-name", default=None,
                        help="the reference experiment name, when the path does not contain it")
    parser.add_argument("--overwrite", action="store_true", help="replace a folder that holds another teacher")
    parser.set_defaults(func=run)


def _error(message: str, status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return status


def run(args: argparse.Namespace) -> int:
    """Import, print what was inferred and ignored; 0 on success, 1 on a bad file, 2 on bad options."""
    from distilvpr_lib.commands.train_teacher import apply_cli_overrides
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.runs.run_folder import write_reference_teacher
    from distilvpr_lib.models.reference_import import (
        ReferenceCheckpointError,
        describe_import,
        prepare_reference_teacher,
    )

    pairs = [item for group in args.overrides for item in group]
    if args.backend:
        pairs.append(f"model.sparse_backend={args.backend}")
    try:
        base = profile_config(args.profile) if args.profile else None
        if base is not None:
            apply_cli_overrides(base, pairs)  # validate the options before reading the file
    except (KeyError, ValueError) as exc:
        return _error(str(exc.args[0]) if exc.args else str(exc), 2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # printed below, with the rest of the summary
            imported = prepare_reference_teacher(args.path, base_config=base, experiment_name=args.experiment_name)
    except (FileNotFoundError, ReferenceCheckpointError) as exc:
        return _error(str(exc), 1)
    try:
        config = apply_cli_overrides(imported.config, pairs)
    except (KeyError, ValueError) as exc:
        return _error(str(exc.args[0]) if exc.args else str(exc), 2)
    try:
        imported = imported.with_config(config)
        out = write_reference_teacher(imported, args.out, overwrite=args.overwrite)
    except ReferenceCheckpointError as exc:
        return _error(str(exc), 2)
    except FileExistsError as exc:
        return _error(str(exc), 1)
    print(describe_import(imported))
    print(f"resolved config:\n{imported.config.to_json()}")
    print(f"wrote teacher folder {out} (config.json, teacher.pt, import.json, metrics.json); the teacher-embedding "
          "cache is built on first use by distilvpr distill / train")
    return 0
