"""Torch datasets over a :class:`~distilvpr_lib.data.benchmark.Benchmark` (docs/METHOD.md §2.5, §2.7).

Items are dicts:

* ``ndx``: int (training: the tuple id; evaluation: the position in ``rel_paths``);
* ``cloud``: FloatTensor ``(4096, 3)``;
* ``image``: FloatTensor ``(3, H, W)``, ImageNet-normalised (absent when images are not loaded);
* ``rel_path``: str, the cloud path relative to the dataset folder.

Quantisation happens in the collate function (:mod:`distilvpr_lib.data.collate`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from distilvpr_lib.config import DataConfig
from distilvpr_lib.data.augment import build_cloud_augmentation, build_image_transform
from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.errors import MissingDataError


class TrainingDataset(Dataset):
    """Training samples: one per training tuple, indexed by tuple id.

    Args:
        benchmark: the loaded benchmark (its ``training_tuples``).
        data_cfg: ``DataConfig`` (augmentation switches, ColorJitter rates, ``image_lidar_k``).
        augment: master switch; ``False`` gives clean clouds and the evaluation image transform.
        load_images: ``None`` = when the benchmark has images; ``True`` requires them.
        cloud_augmentation: override of the cloud augmentation callable (``(P,3) -> (P,3)``).
    """

    def __init__(self, benchmark: Benchmark, data_cfg: DataConfig, augment: bool = True,
                 load_images: bool | None = None,
                 cloud_augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.benchmark = benchmark
        self.data_cfg = data_cfg
        self.tuples = benchmark.training_tuples
        self.load_images = benchmark.has_images if load_images is None else load_images
        if self.load_images and not benchmark.has_images:
            raise MissingDataError(f"{benchmark.dataset_dir}: images requested but the benchmark has no image index")
        if cloud_augmentation is not None:
            self.cloud_augmentation = cloud_augmentation if augment else None
        elif augment and data_cfg.augment_clouds:
            self.cloud_augmentation = build_cloud_augmentation(benchmark.layout)
        else:
            self.cloud_augmentation = None
        augment_images = augment and data_cfg.augment_images
        self.image_transform = build_image_transform(
            train=augment_images, bcs_aug_rate=data_cfg.bcs_aug_rate, hue_aug_rate=data_cfg.hue_aug_rate)
        self.image_lidar_k = max(1, int(data_cfg.image_lidar_k))
        self.augment = augment

    def __len__(self) -> int:
        return len(self.tuples)

    def __getitem__(self, ndx: int) -> dict[str, Any]:
        ndx = int(ndx)
        rel = self.tuples[ndx].rel_scan_filepath
        cloud = torch.from_numpy(self.benchmark.read_cloud(rel))
        if self.cloud_augmentation is not None:
            cloud = self.cloud_augmentation(cloud)
        item: dict[str, Any] = {"ndx": ndx, "cloud": cloud.contiguous(), "rel_path": rel}
        if self.load_images:
            k = 0
            if self.image_lidar_k > 1 and self.augment:
                available = min(self.image_lidar_k, self.benchmark.image_count(rel))
                k = int(torch.randint(available, ())) if available > 1 else 0
            item["image"] = self.image_transform(self.benchmark.read_image(rel, k))
        return item


class EvaluationDataset(Dataset):
    """Evaluation samples of the given clouds: no augmentation, the nearest image, normalised.

    Args:
        benchmark: the loaded benchmark.
        rel_paths: cloud paths relative to the dataset folder (e.g. every ``'query'`` of a split's sets).
        load_images: ``None`` = when the benchmark has images.
    """

    def __init__(self, benchmark: Benchmark, rel_paths: Sequence[str], load_images: bool | None = None) -> None:
        self.benchmark = benchmark
        self.rel_paths = list(rel_paths)
        self.load_images = benchmark.has_images if load_images is None else load_images
        if self.load_images and not benchmark.has_images:
            raise MissingDataError(f"{benchmark.dataset_dir}: images requested but the benchmark has no image index")
        self.image_transform = build_image_transform(train=False)

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, ndx: int) -> dict[str, Any]:
        ndx = int(ndx)
        rel = self.rel_paths[ndx]
        item: dict[str, Any] = {"ndx": ndx, "cloud": torch.from_numpy(self.benchmark.read_cloud(rel)), "rel_path": rel}
        if self.load_images:
            item["image"] = self.image_transform(self.benchmark.read_image(rel, 0))
        return item


def flatten_sets(sets: Sequence[dict[int, dict[Any, Any]]]) -> tuple[list[str], list[int]]:
    """Merge per-run evaluation sets into one list of rel paths (docs/METHOD.md §2.7).

    Returns:
        ``(rel_paths, offsets)``: set ``r`` occupies ``rel_paths[offsets[r]:offsets[r + 1]]``
        (``offsets`` has ``len(sets) + 1`` entries), in key order.
    """
    rel_paths: list[str] = []
    offsets = [0]
    for run_set in sets:
        rel_paths.extend(run_set[k]["query"] for k in sorted(run_set))
        offsets.append(len(rel_paths))
    return rel_paths, offsets
