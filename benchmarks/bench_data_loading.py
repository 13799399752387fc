"""Time the training data path: TrainingDataset (cloud + image, augmentation on) -> collate.

Reads a benchmark folder (Oxford or Boreas layout, with training tuples and images) or, without
an argument, writes a small toy Oxford dataset to a temporary folder first. It iterates the
positive-pair batches of one epoch through a ``DataLoader`` and prints submaps/s and images/s for
the whole path, plus the per-stage split (cloud read + augmentation, image read + transform,
collate with quantisation and masks) measured on the same items in the main process.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data_loading.py            # toy dataset
    .venv/bin/python benchmarks/bench_data_loading.py data/cpu --batch-size 32 --max-batches 20
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir", nargs="?", default=None, help="benchmark folder (default: a toy one in /tmp)")
    parser.add_argument("--image-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-batches", type=int, default=10, help="batches timed (keeps the run under a minute)")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quantization-size", type=float, default=None, help="default: DataConfig's (0.01)")
    parser.add_argument("--train-step-profile", default=None,
                        help="also time teacher training steps (this profile's model) on the same batches and print "
                             "the ratio loading throughput / training consumption (goal >= 3 at the cpu profile)")
    args = parser.parse_args()

    import torch
    from torch.utils.data import DataLoader

    from distilvpr_lib.config import DataConfig
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.data.collate import make_collate_fn
    from distilvpr_lib.data.datasets import TrainingDataset
    from distilvpr_lib.data.sampler import PositivePairBatchSampler

    torch.set_num_threads(args.threads)
    tmp = None
    if args.dataset_dir is None:
        from distilvpr_lib.data.toy import write_toy_oxford_dataset

        tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
        started = time.perf_counter()
        dataset_dir = write_toy_oxford_dataset(Path(tmp.name), n_runs=4, route_length_m=600.0, image_size=(320, 240))
        print(f"toy dataset written in {time.perf_counter() - started:.1f} s: {dataset_dir} (4 runs, 320x240 images)")
    else:
        dataset_dir = Path(args.dataset_dir)

    benchmark = Benchmark.load(dataset_dir, image_dir=args.image_dir)
    data_cfg = DataConfig(dataset_dir=str(dataset_dir), layout=benchmark.layout, num_workers=args.num_workers)
    if args.quantization_size is not None:
        data_cfg.quantization_size = args.quantization_size
    elif benchmark.layout == "boreas":
        data_cfg.quantization_size = 1.0
    print(f"benchmark: layout {benchmark.layout}, {len(benchmark.training_tuples)} training tuples, "
          f"images: {benchmark.has_images}, batch {args.batch_size}, workers {args.num_workers}, "
          f"torch threads {args.threads}")
    if not benchmark.training_tuples:
        raise SystemExit(f"{dataset_dir}: no training tuples to load")

    dataset = TrainingDataset(benchmark, data_cfg, augment=True)
    sampler = PositivePairBatchSampler(benchmark.training_tuples, args.batch_size, seed=0)
    collate = make_collate_fn(benchmark.training_tuples, data_cfg.quantization_size)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.num_workers)

    torch.manual_seed(0)
    dataset[0]  # warm up imports and caches
    n_items = n_batches = n_voxels = 0
    kept_batches = []
    started = time.perf_counter()
    for batch in loader:
        if len(kept_batches) < 3:
            kept_batches.append(batch)
        n_items += len(batch["labels"])
        n_voxels += len(batch["coords"])
        n_batches += 1
        if n_batches >= args.max_batches:
            break
    elapsed = time.perf_counter() - started
    n_images = n_items if dataset.load_images else 0
    print(f"end to end: {n_batches} batches, {n_items} submaps in {elapsed:.2f} s -> "
          f"{n_items / elapsed:.1f} submaps/s, {n_images / elapsed:.1f} images/s, "
          f"{n_voxels / max(n_items, 1):.0f} voxels/submap")

    # Per-stage split on the first batches, in this process.
    ids = [i for batch in list(sampler)[: max(1, min(args.max_batches, 3))] for i in batch]
    rels = [benchmark.training_tuples[i].rel_scan_filepath for i in ids]
    t0 = time.perf_counter()
    clouds = [torch.from_numpy(benchmark.read_cloud(rel)) for rel in rels]
    t1 = time.perf_counter()
    if dataset.cloud_augmentation is not None:
        clouds = [dataset.cloud_augmentation(c) for c in clouds]
    t2 = time.perf_counter()
    images = [benchmark.read_image(rel) for rel in rels] if dataset.load_images else []
    t3 = time.perf_counter()
    tensors = [dataset.image_transform(im) for im in images]
    t4 = time.perf_counter()
    items = [{"ndx": i, "cloud": c, "rel_path": r, **({"image": x} if tensors else {})}
             for i, c, r, x in zip(ids, clouds, rels, tensors or [None] * len(ids))]
    for start in range(0, len(items), args.batch_size):
        collate(items[start:start + args.batch_size])
    t5 = time.perf_counter()
    n = len(ids)
    print(f"per stage over {n} submaps (ms/submap): cloud read {1e3 * (t1 - t0) / n:.2f}, "
          f"cloud augmentation {1e3 * (t2 - t1) / n:.2f}, image read {1e3 * (t3 - t2) / n:.2f}, "
          f"image transform {1e3 * (t4 - t3) / n:.2f}, collate (quantise + masks) {1e3 * (t5 - t4) / n:.2f}")
    if args.train_step_profile:
        load_rate = n_items / elapsed
        train_rate = time_teacher_steps(kept_batches, args.train_step_profile)
        print(f"teacher training step ({args.train_step_profile} profile model): consumes {train_rate:.1f} submaps/s; "
              f"loading sustains {load_rate:.1f} submaps/s -> ratio {load_rate / train_rate:.1f}x (goal >= 3x)")
    if tmp is not None:
        tmp.cleanup()


def time_teacher_steps(batches: list, profile: str) -> float:
    """Submaps/s consumed by teacher training steps (forward + triplet loss + backward + Adam) on ``batches``."""
    import torch

    from distilvpr_lib.config import profile_config
    from distilvpr_lib.engine.train.objectives import TeacherObjective
    from distilvpr_lib.engine.train.optim import build_optimizer, teacher_parameter_groups
    from distilvpr_lib.models import build_teacher

    cfg = profile_config(profile)
    torch.manual_seed(0)
    model = build_teacher(cfg.model).train()
    objective = TeacherObjective(cfg.train)
    optimizer = build_optimizer(teacher_parameter_groups(model, cfg.train), cfg.train)

    def step(batch: dict) -> None:
        optimizer.zero_grad()
        objective(model(batch), batch).total.backward()
        optimizer.step()

    step(batches[0])  # warm-up (kernel maps, allocator)
    started = time.perf_counter()
    n = 0
    for batch in batches:
        step(batch)
        n += len(batch["labels"])
    return n / (time.perf_counter() - started)


if __name__ == "__main__":
    main()
