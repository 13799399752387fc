"""Time the preflight that ``train-teacher`` / ``distill`` / ``evaluate`` run before writing anything.

Measures, on an existing dataset (default: the ``cpu`` profile's ``data/cpu``), the dataset part of the
preflight (pickles loaded and validated, every referenced cloud ``stat``-ed, every image header read;
``engine.runs.preflight.preflight_dataset``), the same with every image decoded (what ``check-data --deep``
adds), and the weights part (a state_dict checked against the config's model built on the meta device).

It never generates data: when the dataset folder does not exist it says so and exits 0 (make one with
``distilvpr synth --profile cpu``, or ``make demo``).

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_preflight.py                 # data/cpu
    .venv/bin/python benchmarks/bench_preflight.py data/smoke --profile smoke --repeat 3
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", nargs="?", default=None, help="dataset folder (default: the profile's)")
    parser.add_argument("--profile", default="cpu", help="profile whose dataset and model are used (default cpu)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the median is printed")
    parser.add_argument("--skip-deep", action="store_true", help="do not time the full image decode")
    args = parser.parse_args()

    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.train.checkpoint import save_weights
    from distilvpr_lib.engine.runs.preflight import PreflightReport, preflight_dataset, preflight_weights
    from distilvpr_lib.models import build_teacher

    cfg = profile_config(args.profile)
    dataset = Path(args.dataset_dir or cfg.data.dataset_dir)
    if not dataset.is_dir():
        print(f"bench_preflight: {dataset} does not exist; skipped (this benchmark never generates data: "
              f"distilvpr synth --profile {args.profile} --out {dataset})")
        return 0
    splits = ("test", "validation") if cfg.train.use_validation_split else ("test",)

    def dataset_check(decode: bool = False) -> PreflightReport:
        report = PreflightReport()
        preflight_dataset(dataset, image_dir=cfg.data.image_dir, training=True, splits=splits,
                          decode_images=decode, report=report)
        return report

    seconds, report = _timed(dataset_check, args.repeat)
    print(f"preflight dataset ({dataset}, profile {args.profile}): {seconds:.2f} s "
          f"({report.clouds} clouds stat-ed, {report.images} image headers read; median of {args.repeat})")
    if not args.skip_deep:
        deep, _ = _timed(lambda: dataset_check(decode=True), max(1, args.repeat // 2))
        print(f"  with every image decoded (check-data --deep's image part): {deep:.2f} s")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "teacher.pt"
        model_cfg = dataclasses.replace(cfg.model, pretrained_image_weights=None)  # shapes only, no file needed
        save_weights(weights, build_teacher(model_cfg).state_dict())
        wseconds, _ = _timed(lambda: preflight_weights(weights, model_cfg, "teacher"), args.repeat)
        print(f"preflight teacher.pt ({weights.stat().st_size / 1e6:.1f} MB, keys + shapes vs the config): "
              f"{wseconds:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
