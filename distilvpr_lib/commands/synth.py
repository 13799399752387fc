"""``distilvpr synth --profile {smoke,cpu,study,paper} --out DIR [--seed N] [--layout {oxford,boreas}]
[--boreas-poses {procedural,DIR}]``.

Generates the procedural multi-modal dataset (clouds, images, CSVs, pickles) into ``DIR``;
re-running completes an interrupted generation (only missing files are rendered). The Boreas layout is
driven by procedural drives of one generated route (the default, ``--boreas-poses procedural``: nothing
outside the repository is needed) or by the real Boreas trajectories of a poses folder (docs/DATA.md).
:func:`ensure_dataset` runs it from Python when a folder holds no benchmark yet (notebook 01).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distilvpr_lib.config import LAYOUTS, Layout


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand."""
    from distilvpr_lib.config import PROFILES

    parser = subparsers.add_parser(
        "synth",
        help="generate the procedural multi-modal dataset (Oxford or Boreas layout)",
        description="Generate synthetic runs of one procedural city (LiDAR submaps, camera images, location "
                    "CSVs and benchmark pickles). Same seed -> identical files; an interrupted generation "
                    "is completed on re-run.",
    )
    parser.add_argument("--profile", default="cpu", choices=sorted(PROFILES), help="size profile (default: cpu)")
    parser.add_argument("--out", default=None, help="output folder (default: the profile's data.dataset_dir)")
    parser.add_argument("--seed", type=int, default=None, help="generator seed (default: the profile's synth.seed)")
    parser.add_argument("--layout", default="oxford", choices=LAYOUTS,
                        help="on-disk layout (default: oxford; boreas: a suburban road driven repeatedly)")
    parser.add_argument("--boreas-poses", default=None, metavar="{procedural,DIR}",
                        help="--layout boreas only: the drives. 'procedural' (default): the profile's n_runs "
                             "drives of one generated route, from the seed alone; DIR: the real Boreas drives "
                             "of DIR/<run>/applanix/*_poses.csv (e.g. $DISTILVPR_REAL_DATA/boreas_poses)")
    parser.add_argument("--route-length", type=float, default=None, metavar="M",
                        help="route length in metres (default: the profile's synth.route_length_m); a Boreas "
                             "dataset needs about 500 m for a training region at the smoke profile")
    parser.add_argument("--workers", type=int, default=None, help="rendering processes (default: the profile's)")
    parser.add_argument("--no-progress", action="store_true", help="do not show a progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate; print a summary; return 0 on success, 2 on a settings conflict."""
    from distilvpr_lib.config import profile_config
    from distilvpr_lib.data.synth.generate import generate_dataset

    cfg = profile_config(args.profile)
    if args.boreas_poses is not None and args.layout != Layout.BOREAS:
        print(f"synth: error: --boreas-poses {args.boreas_poses} applies to --layout boreas only", file=sys.stderr)
        return 2
    if args.route_length is not None:
        if not args.route_length > 0:
            print(f"synth: error: --route-length must be > 0, got {args.route_length:g}", file=sys.stderr)
            return 2
        cfg.synth.route_length_m = float(args.route_length)
    out = args.out or (cfg.data.dataset_dir + ("_boreas" if args.layout == Layout.BOREAS else ""))
    try:
        report = generate_dataset(out, cfg.synth, seed=args.seed, layout=args.layout, workers=args.workers,
                                  progress=not args.no_progress, boreas_poses_dir=args.boreas_poses)
    except (ValueError, FileNotFoundError) as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    if report.already_complete:
        print(f"synth: {out} is already complete ({report.clouds_total} clouds, {report.images_total} images)")
        return 0
    resumed = (report.clouds_written, report.images_written) != (report.clouds_total, report.images_total)
    in_all = f" ({report.clouds_total} clouds, {report.images_total} images in all)" if resumed else ""
    print(f"synth: wrote {report.clouds_written} clouds and {report.images_written} images into {out}{in_all} "
          f"in {report.total_seconds:.1f} s "
          f"[LiDAR {report.lidar_seconds:.1f} s, camera {report.camera_seconds:.1f} s of worker time]")
    drives = ""
    if args.layout == Layout.BOREAS:
        drives = (" driven by procedural drives" if report.world_summary.get("trajectories") == "procedural"
                  else f" driven by the real drives of {args.boreas_poses}")
    print(f"synth: runs {', '.join(report.runs)}; route {report.world_summary.get('route_length_m', 0):.0f} m{drives}")
    if report.splits_summary:
        s = report.splits_summary
        print(f"synth: training tuples {s['training_tuples']}, test queries {sum(s['test_query'])}, "
              f"validation queries {sum(s['validation_query'])}")
    return 0


def _has_benchmark(dataset_dir: Path) -> bool:
    from distilvpr_lib.data.benchmark import detect_layout

    try:
        detect_layout(dataset_dir)
    except (OSError, ValueError):
        return False
    return any(dataset_dir.glob("*.pickle"))


def ensure_dataset(dataset_dir: str | Path, profile: str = "smoke", seed: int | None = None, generate: bool = True) -> Path:
    """Return ``dataset_dir``, generating it first with ``distilvpr synth`` when it holds no benchmark.

    Args:
        dataset_dir: the dataset folder.
        profile: generator profile (``smoke`` / ``cpu`` / ``paper``) used when generating.
        seed: generator seed (None: the profile's).
        generate: when False, a missing dataset is an error instead.

    Raises:
        FileNotFoundError: no benchmark in the folder and ``generate`` is False.
        RuntimeError: the generator failed (its exit status is in the message).
    """
    dataset_dir = Path(dataset_dir)
    if _has_benchmark(dataset_dir):
        return dataset_dir
    if not generate:
        raise FileNotFoundError(f"{dataset_dir}: no benchmark here (generate one with "
                                f"`distilvpr synth --profile {profile} --out {dataset_dir}`)")
    argv = ["synth", "--profile", profile, "--out", str(dataset_dir)]
    if seed is not None:
        argv += ["--seed", str(int(seed))]
    parser = argparse.ArgumentParser(prog="distilvpr")
    register(parser.add_subparsers())
    status = run(parser.parse_args(argv))
    if status != 0 or not _has_benchmark(dataset_dir):
        raise RuntimeError(f"{dataset_dir}: `distilvpr synth --profile {profile}` failed (exit status {status})")
    return dataset_dir
