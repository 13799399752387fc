"""``distilvpr distill --dataset DIR --teacher teacher_weights/NAME [--profile ...] [--method nokd|distilvpr|...]
[--set term=weight | section.field=value ...] [--seed N] [--epochs N] [--out runs/NAME]``.

Trains the image-only student (engine.runs.student_run.distill_student) with the task loss plus the terms of the
distillation preset ``--method`` (``--set rkdg=10`` overrides one term's weight), against the
teacher's cached embeddings. Selection on validation, report on test. Writes ``config.json``,
``student.pt``, ``metrics.json`` (every named loss's final magnitude, validation and test
summaries), ``test_results.npz``, ``checkpoints/`` and ``tensorboard/`` into ``--out``.
Runs data-parallel under ``torchrun --nproc-per-node N -m distilvpr_lib.cli distill ...`` (docs/SCALING.md).
"""

from __future__ import annotations

import argparse

from distilvpr_lib.commands.train_teacher import add_common_training_options, apply_cli_overrides, build_config, fail


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``distill`` subcommand."""
    parser = subparsers.add_parser(
        "distill",
        help="distil a trained teacher into the image-only student (or train it alone: --method nokd)",
        description="Train the image-only student against the teacher's cached embeddings; writes config.json, "
                    "student.pt, metrics.json, test_results.npz, checkpoints/ and tensorboard/ into --out. "
                    "--set takes config fields (train.epochs=3) and loss-term weights (rkdg=10).",
    )
    add_common_training_options(parser)
    parser.add_argument("--teacher", default=None, help="teacher folder written by train-teacher (not needed for nokd)")
    parser.add_argument("--method", default=None,
                        help="distillation preset: nokd, distilvpr, distilvpr_boreas, a baseline (kd, rkd, ...) "
                             "or an ablation (default: the profile's distill.method)")
    parser.add_argument("--out", default=None, help="run folder (default runs/<method>_<profile>_seed<seed>)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Resolve the config, train the student, print its summary; 0 on success, 2 on bad options."""
    from pathlib import Path

    from distilvpr_lib.config import apply_overrides, method_name_problem

    try:
        cfg = build_config(args, allow_terms=True)
        if args.method is not None:
            cfg = apply_overrides(cfg, {"distill.method": args.method})
            # --set wins over what the name implies, then a contradiction is refused by name (not overridden)
            cfg = apply_cli_overrides(cfg, [item for group in args.overrides for item in group], allow_terms=True)
            problem = method_name_problem(cfg)
            if problem:
                return fail(problem)
        from distilvpr_lib.losses.distiller import Distiller

        needs_teacher = bool(Distiller(cfg.distill).weights)
    except (KeyError, ValueError) as exc:
        return fail(str(exc.args[0]) if exc.args else str(exc))
    if needs_teacher and args.teacher is None:
        return fail(f"--teacher is required for method {cfg.distill.method!r} (only nokd trains without one)")
    if args.teacher is not None and not Path(args.teacher).is_dir():
        return fail(f"--teacher {args.teacher}: no such folder")
    out = Path(args.out or Path("runs") / f"{cfg.distill.method}_{args.profile}_seed{cfg.train.seed}")
    # the inputs first, before torch is imported: bad input fails in about a second, nothing written
    from distilvpr_lib.engine.runs.preflight import preflight_distill

    preflight_distill(cfg, args.teacher, out, resume=not args.no_resume)
    from distilvpr_lib.engine.runs.student_run import distill_student

    metrics = distill_student(cfg, args.teacher, out, resume=not args.no_resume, progress=not args.quiet,
                              preflight=False)
    from distilvpr_lib.engine.runs.run_setup import summary_text
    from distilvpr_lib.engine.train.distributed import is_main_process

    if args.quiet and is_main_process():  # the pipeline printed the summary unless quiet; print it once
        print(summary_text(f"student ({cfg.distill.method})", metrics, out))
    return 0
