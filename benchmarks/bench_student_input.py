"""The student's input path at the study profile: decoded image cache vs per-sample PNG DataLoader.

On one core (``torch.set_num_threads(1)``) it times, over the same positive-pair batches of one epoch:

* the DataLoader path (``TrainingDataset``: cloud read, PNG decode, torchvision transforms, collate);
* the cached path (``data.image_cache``: rows of the uint8 memmap, batch colour jitter + erasing, masks);
* the student train step these batches feed (bfloat16 autocast as the profile trains, then fp32);

and prints samples/s of each and the ratio loading / consumption (goal >= 3: the step, not the input,
bounds training).

Usage::

    .venv/bin/python benchmarks/bench_student_input.py data/study --profile study --batches 20
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", help="benchmark folder (e.g. data/study)")
    parser.add_argument("--profile", default="study")
    parser.add_argument("--batches", type=int, default=20, help="batches timed per path")
    parser.add_argument("--steps", type=int, default=5, help="train steps timed")
    args = parser.parse_args()

    import torch

    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.runs.run_setup import make_cached_student_loader, make_training_loader
    from distilvpr_lib.engine.train.distributed import single_process_context
    from distilvpr_lib.engine.train.objectives import StudentObjective
    from distilvpr_lib.engine.train.optim import build_optimizer, student_parameter_groups
    from distilvpr_lib.models import build_student

    torch.set_num_threads(1)
    cfg = apply_overrides(profile_config(args.profile), {"data.dataset_dir": args.dataset_dir,
                                                         "model.pretrained_image_weights": None})
    bench = Benchmark.load(args.dataset_dir)
    ctx = single_process_context(torch.device("cpu"))

    def rate(loader) -> tuple[float, dict]:
        it = iter(loader)
        first = next(it)  # warm-up (cache opened, workers started)
        n, t0 = 0, time.perf_counter()
        for i, batch in enumerate(it):
            n += len(batch["rel_paths"])
            if i + 1 >= args.batches:
                break
        return n / (time.perf_counter() - t0), first

    t0 = time.perf_counter()
    cached = make_cached_student_loader(bench, cfg, progress=True)
    print(f"image cache opened/built in {time.perf_counter() - t0:.1f} s: {cached.cache.pixels.shape} uint8, "
          f"{cached.cache.pixels.nbytes / 2**20:.0f} MiB")
    png_rate, _ = rate(make_training_loader(bench, cfg, ctx, data_cfg=dataclasses.replace(cfg.data, augment_clouds=False)))
    cache_rate, batch = rate(cached)

    student = build_student(cfg.model)
    optimizer = build_optimizer(student_parameter_groups(student, cfg.train), cfg.train)
    objective = StudentObjective(cfg.train, None)
    results = {}
    for name, bf16 in (("bf16", True), ("fp32", False)):
        times = []
        for i in range(args.steps + 1):
            t = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = student(batch)
            objective(out, batch).total.backward()
            optimizer.step()
            if i:
                times.append(time.perf_counter() - t)
        times.sort()
        results[name] = len(batch["rel_paths"]) / times[len(times) // 2]
    h, w = cached.cache.image_size
    print(f"profile {args.profile}, {h}x{w} images, batch {cfg.train.batch_size}, 1 thread:")
    print(f"  DataLoader path (PNG + per-sample transforms + clouds): {png_rate:8.1f} samples/s")
    print(f"  cached path (uint8 memmap + batch augmentation):       {cache_rate:8.1f} samples/s "
          f"({cache_rate / png_rate:.1f}x the DataLoader path)")
    for name, consumed in results.items():
        print(f"  student train step ({name}): {consumed:8.1f} samples/s consumed -> loading / consumption: "
              f"cached {cache_rate / consumed:5.1f}x, DataLoader {png_rate / consumed:5.1f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
