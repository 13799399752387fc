"""``distilvpr train``: the reference ``train.py`` command line, mapped onto the workbook.

    distilvpr train --model minklocmmcat --teacher_weights_path <...>/r1_best_ep57_97.24.pth \\
        --rkdgloss_weight 10 --crosslogitdistloss_weight_st2ss 0.1 \\
        --crosslogitsimloss_weight_st2ss 0.1 --crosslogitgeodistloss_weight_st2ss 0.1 \\
        --dataset_folder data/oxford --image_path data/oxford/images

``--teacher_weights_path`` takes a teacher folder of this workbook or a bare reference ``.pth``
state_dict (imported on the fly into ``<out>/teacher``). See :mod:`distilvpr_lib.reference`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distilvpr_lib.config import PROFILES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train", help="train with the reference DistilVPR option names (train.py compatible)",
        description="Accepts the option names of the reference tools/options.py; values not given come from "
                    "--profile (default paper = the reference defaults).")
    p.add_argument("--profile", default="paper", help=f"defaults for options not given ({' | '.join(PROFILES)})")
    p.add_argument("--faithful", action="store_true",
                   help="reproduce the reference's number-changing quirks (see distilvpr_lib.reference)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<reference experiment name>)")
    p.add_argument("--seed", type=int, default=7, help="random seed (the reference uses 7)")
    p.add_argument("--backend", default=None, help="sparse backend for the teacher: torch | minkowski")
    p.add_argument("--dry_run", action="store_true", help="print the resolved config and exit")
    from distilvpr_lib.reference import add_reference_options

    add_reference_options(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from distilvpr_lib.config import apply_overrides
    from distilvpr_lib.reference import ReferenceOptionError, experiment_name, resolve_reference_options

    try:
        run = resolve_reference_options(args, profile=args.profile, faithful=args.faithful)
    except (ReferenceOptionError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    overrides = {"train.seed": args.seed}
    if args.backend:
        overrides["model.sparse_backend"] = args.backend
    cfg = apply_overrides(run.config, overrides)
    for note in run.notes:
        print(f"note: {note}")
    name = experiment_name(run)
    out = Path(args.out or Path("runs") / name)
    print(f"experiment: {name}\noutput: {out}\nresolved config:\n{cfg.to_json()}")
    if args.dry_run:
        return 0
    if run.train_mode == "train_teacher":
        from distilvpr_lib.engine.runs.teacher_run import train_teacher

        train_teacher(cfg, out)
        return 0
    if not run.teacher_weights_path:
        print("error: --teacher_weights_path is required to train a student (pass a teacher folder or a .pth)",
              file=sys.stderr)
        return 2
    from distilvpr_lib.engine.runs.preflight import preflight_dataset, preflight_out_dir
    from distilvpr_lib.engine.runs.student_run import distill_student

    teacher = Path(run.teacher_weights_path)
    if teacher.is_file():
        # the import below writes <out>/teacher: check the dataset and the folder first
        preflight_out_dir(out)
        preflight_dataset(cfg.data.dataset_dir, image_dir=cfg.data.image_dir, layout=cfg.data.layout,
                          splits=("test", "validation") if cfg.train.use_validation_split else ("test",))
        from distilvpr_lib.engine.runs.run_folder import import_reference_teacher

        teacher_dir = out / "teacher"
        import_reference_teacher(teacher, teacher_dir, base_config=cfg)
        teacher = teacher_dir
    elif not teacher.is_dir():
        print(f"error: --teacher_weights_path {teacher}: no such file or folder", file=sys.stderr)
        return 2
    if args.student_output_dim is None:
        # the student's dimension follows the teacher's unless given explicitly (the cross-agent terms need it)
        from distilvpr_lib.config import ExperimentConfig

        teacher_model = ExperimentConfig.load(teacher / "config.json").model
        cfg = apply_overrides(cfg, {"model.student_dim": teacher_model.cloud_dim + teacher_model.image_dim})
    distill_student(cfg, teacher, out)
    return 0
