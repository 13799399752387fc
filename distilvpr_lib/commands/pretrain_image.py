"""``distilvpr pretrain-image [--profile study] [--dataset data/study-prior] [--out teacher_weights/study-prior]``.

Makes the visual prior (engine.runs.prior): generates a separately seeded world (``prior.seed``; checked to share
no building with the study world), trains the image network on it as a no-distillation student and writes
``image_prior.pth`` (torchvision-style ResNet weights) and ``prior.json`` into ``--out``. Resumable.
Point ``model.pretrained_image_weights`` at the file (the ``study`` profile does) to initialise both the
teacher's image branch and the student from it, as the paper does with ImageNet.
"""

from __future__ import annotations

import argparse

from distilvpr_lib.commands.train_teacher import fail


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``pretrain-image`` subcommand."""
    parser = subparsers.add_parser(
        "pretrain-image",
        help="pretrain the image backbone on a separately seeded world (the visual prior of the study)",
        description="Generate the prior world, train the image network on it (no-KD student), export "
                    "image_prior.pth + prior.json into --out.",
    )
    parser.add_argument("--profile", default="study", help="profile whose image networks use the prior (default %(default)s)")
    parser.add_argument("--dataset", default=None, help="prior world dataset folder (default data/<profile>-prior)")
    parser.add_argument("--out", default=None,
                        help="prior folder (default: the folder of the profile's model.pretrained_image_weights)")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: the profile's)")
    parser.add_argument("--no-resume", action="store_true", help="retrain even if --out holds a checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Make the prior; 0 on success, 2 on bad options."""
    from pathlib import Path

    from distilvpr_lib.config import profile_config

    try:
        cfg = profile_config(args.profile)
    except KeyError as exc:
        return fail(str(exc.args[0]))
    out = args.out
    if out is None:
        if not cfg.model.pretrained_image_weights:
            return fail(f"profile {args.profile!r} uses no pretrained image weights; give --out")
        out = str(Path(cfg.model.pretrained_image_weights).parent)
    dataset = args.dataset or f"data/{args.profile}-prior"
    from distilvpr_lib.engine.runs.prior import pretrain_image_prior

    try:
        record = pretrain_image_prior(cfg, dataset, out, resume=not args.no_resume, progress=not args.quiet,
                                      workers=args.workers)
    except ValueError as exc:
        return fail(str(exc))
    test = record.get("prior_test") or {}
    print(f"image prior -> {Path(out) / record['weights_file']} (prior world seed {record['prior_world_seed']}, "
          f"{record['shared_buildings_with_study_world']['shared']} buildings shared with the study world; "
          f"AR@1 on the prior world's test split {test.get('AR@1')})")
    return 0
