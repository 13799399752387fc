"""A tiny hand-made Oxford-layout dataset for tests and benchmarks (not the procedural generator).

Each run drives the same straight route northwards from the centre of test square P1: the first
150 m lie inside the test square, the rest in the training region. Sub-maps every 10 m
(``pointcloud_20m_10overlap``) and every 20 m (``pointcloud_20m``), with a small per-run position
jitter; clouds are random but place-dependent; one small PNG per sub-map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from distilvpr_lib.config import OXFORD_TEST_SQUARE_CENTRES, POINTS_PER_CLOUD
from distilvpr_lib.data.clouds import write_bin
from distilvpr_lib.data.files import PathLike, atomic_write
from distilvpr_lib.data.locations import write_locations_csv
from distilvpr_lib.data.splits import (
    EVALUATION_CLOUD_FOLDER,
    EVALUATION_LOCATIONS_CSV,
    LIDAR2IMAGE_PICKLE,
    OXFORD_RUNS_FOLDER,
    TRAINING_CLOUD_FOLDER,
    TRAINING_LOCATIONS_CSV,
    build_lidar2image_ndx,
    build_oxford_benchmark,
    write_lidar2image_ndx,
)

#: Image timestamps are the LiDAR timestamp plus this offset (µs).
IMAGE_TIME_OFFSET_US = 5_000


def toy_run_names(n_runs: int) -> list[str]:
    """Oxford-style 19-character run names ``2014-05-DD-10-00-00``."""
    return [f"2014-05-{day:02d}-10-00-00" for day in range(1, n_runs + 1)]


def _place_cloud(place_id: float, run_seed: int) -> np.ndarray:
    base = np.random.default_rng(int(round(place_id * 10)) + 12345).uniform(-1.0, 1.0, (POINTS_PER_CLOUD, 3))
    noise = np.random.default_rng(run_seed).normal(0.0, 0.01, base.shape)
    return np.clip(base + noise, -1.0, 1.0)


def write_toy_oxford_dataset(
    root: PathLike,
    n_runs: int = 3,
    route_length_m: float = 400.0,
    image_size: tuple[int, int] = (32, 24),
    with_images: bool = True,
    seed: int = 0,
    build: bool = True,
    **build_kwargs: Any,
) -> Path:
    """Write a toy Oxford-layout dataset under ``root`` (and by default its benchmark pickles).

    Args:
        root: dataset folder (created).
        n_runs: number of runs, all along the same route.
        route_length_m: route length from the centre of P1 northwards.
        image_size: ``(width, height)`` of the PNGs.
        with_images: write ``images/<run>/<ts>.png`` and ``images/lidar2image_ndx.pickle``.
        seed: jitter seed.
        build: run :func:`build_oxford_benchmark` with ``build_kwargs``.

    Returns:
        ``root`` as a Path.
    """
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    start_north, start_east = OXFORD_TEST_SQUARE_CENTRES[0]
    image_ndx: dict[int, list[int]] = {}
    for r, run in enumerate(toy_run_names(n_runs)):
        run_dir = root / OXFORD_RUNS_FOLDER / run
        run_start = 1_400_000_000_000_000 + r * 10_000_000_000
        for folder, csv, step, offset in ((TRAINING_CLOUD_FOLDER, TRAINING_LOCATIONS_CSV, 10.0, 0),
                                          (EVALUATION_CLOUD_FOLDER, EVALUATION_LOCATIONS_CSV, 20.0, 500_000)):
            distances = np.arange(0.0, route_length_m, step)
            timestamps = run_start + offset + (distances * 100_000).astype(np.int64)
            north = start_north + distances + rng.uniform(-1.5, 1.5, len(distances))
            east = start_east + rng.uniform(-1.5, 1.5, len(distances))
            for d, ts in zip(distances.tolist(), timestamps.tolist()):
                write_bin(run_dir / folder / f"{ts}.bin", _place_cloud(d, seed * 1000 + r))
            write_locations_csv(run_dir / csv, timestamps, north, east)
            if with_images:
                image_ts = timestamps + IMAGE_TIME_OFFSET_US
                image_ndx.update(build_lidar2image_ndx(timestamps, image_ts, k=2))
                for d, ts in zip(distances.tolist(), image_ts.tolist()):
                    shade = int(d) % 256
                    array = np.zeros((image_size[1], image_size[0], 3), dtype=np.uint8)
                    array[..., 0] = shade
                    array[..., 1] = (37 * r) % 256
                    array[: image_size[1] // 2, :, 2] = 255 - shade
                    path = root / "images" / run / f"{ts}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_write(path, "wb") as f:
                        Image.fromarray(array).save(f, format="PNG")
    if with_images:
        write_lidar2image_ndx(root / "images" / LIDAR2IMAGE_PICKLE, image_ndx)
    if build:
        build_oxford_benchmark(root, **build_kwargs)
    return root
