"""``distilvpr evaluate --model (teacher folder | run folder) [--dataset DIR] [--split test|validation]``.

Loads ``teacher.pt`` or ``student.pt`` with the folder's ``config.json``, runs the PointNetVLAD
protocol on a split and prints AR@1/5/10/1% and per-database-run AR@1 (``--json``: as JSON).
``--save PATH`` writes the RetrievalResults (``.npz`` or ``.json``) for the retrieval browser.
"""

from __future__ import annotations

import argparse
import json

from distilvpr_lib.config import AUTO_LAYOUT, LAYOUTS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a teacher folder or student run on a split",
        description="Evaluate the model of a teacher folder (teacher.pt) or student run (student.pt) with the "
                    "PointNetVLAD protocol and print the summary.",
    )
    parser.add_argument("--model", required=True, help="teacher folder or run folder (with config.json)")
    parser.add_argument("--dataset", default=None, help="benchmark folder (default: the one in the folder's config)")
    parser.add_argument("--image-dir", default=None, help="image folder override")
    parser.add_argument("--split", default="test", choices=("test", "validation"),
                        help="split evaluated (default %(default)s; validation is the split epochs are selected on)")
    parser.add_argument("--layout", default=AUTO_LAYOUT, choices=(AUTO_LAYOUT, *LAYOUTS),
                        help="layout of the evaluated dataset (default auto: detected from its files)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda (default %(default)s)")
    parser.add_argument("--save", default=None, help="write the RetrievalResults here (.npz or .json)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print; 0 on success, 2 when ``--model`` is not a folder (bad files: 1, at the CLI boundary)."""
    from pathlib import Path

    from distilvpr_lib.commands.train_teacher import fail
    from distilvpr_lib.engine.runs.preflight import preflight_evaluate

    if not Path(args.model).is_dir():
        return fail(f"--model {args.model}: no such folder")
    # Bad files (a missing cloud, a corrupt teacher.pt) propagate to the CLI boundary: one line, exit 1.
    # Checked before the evaluation code (and torch) is imported.
    from distilvpr_lib.config_checks import check_device_name

    check_device_name(args.device, "--device")
    preflight_evaluate(args.model, dataset_dir=args.dataset, split=args.split, image_dir=args.image_dir,
                       layout=args.layout)
    from distilvpr_lib.engine.runs.run_evaluation import evaluate_run

    summary, _ = evaluate_run(args.model, dataset_dir=args.dataset, split=args.split, device=args.device,
                              image_dir=args.image_dir, progress=not args.quiet, results_path=args.save,
                              preflight=False, layout=args.layout)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    recalls = "  ".join(f"{k}={v:.2f}" for k, v in summary.items() if k.startswith("AR@") and v is not None)
    print(f"{summary['kind']} {args.model} on the {args.split} split: {recalls}")
    per_run = summary.get("per_run_AR@1") or {}
    for name, value in per_run.items():
        print(f"  {name}: AR@1={'n/a' if value is None else f'{value:.2f}'}")
    if args.save:
        print(f"results written to {args.save}")
    return 0
