"""Training images decoded once into a memory-mapped uint8 array, and augmented in batches.

At small resolutions the student step is cheap enough that decoding a PNG and running torchvision's
per-sample transforms for every sample every epoch costs as much as the step itself. The cache decodes
every training image once into ``(N, H, W, 3)`` uint8 (``.npy``, memory-mapped), and
:class:`BatchImageAugment` applies colour jitter and random erasing to a whole (B, 3, H, W) batch at
once with per-sample parameters. :class:`CachedStudentLoader` yields the same batch dict as the
DataLoader path (``images``, ``labels``, ``positives_mask``, ``negatives_mask``, ``skip``, ``rel_paths``)
for the image-only student (single process; distributed runs keep the DataLoader).

Files, in ``<cache_dir>`` (default ``<dataset_dir>/.cache``)::

    train_images_<H>x<W>_k<K>.npy    the pixels, rows in the order of ``keys``
    train_images_<H>x<W>_k<K>.json   version, shape, keys ("<rel path>|<k>"), the images' fingerprint
                                     (sha256 of every file's name, size and mtime) and the .npy's sha256;
                                     written last: a cache without it is incomplete and rebuilt.

A cache whose fingerprint no longer matches the images is *stale* and rebuilt (with a message). One whose
``.npy`` does not match its recorded shape or sha256 is *corrupt* and refused with
:class:`ImageCacheError` naming the file (delete it to rebuild): silently training on damaged pixels
would be worse than stopping.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distilvpr_lib.config import IMAGE_CACHE_FOLDER, IMAGENET_MEAN, IMAGENET_STD
from distilvpr_lib.data.augment import ERASING_PROBABILITY, ERASING_RATIO, ERASING_SCALE
from distilvpr_lib.data.files import atomic_output_path, atomic_write, file_sha256
from distilvpr_lib.errors import DataFormatError

CACHE_VERSION = 1
DEFAULT_CACHE_FOLDER = IMAGE_CACHE_FOLDER


class ImageCacheError(DataFormatError):
    """A corrupt or unusable image cache (the message names the file and what to do)."""


def images_fingerprint(paths: Sequence[Path]) -> str:
    """sha256 over every image file's path, size and modification time (ns): changes when any image does."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


@dataclass
class ImageCache:
    """A loaded cache: ``pixels`` (N, H, W, 3) uint8 memmap and ``row[(rel_path, k)]``."""

    path: Path
    pixels: np.ndarray
    keys: list[str]

    def __post_init__(self) -> None:
        self.row = {key: i for i, key in enumerate(self.keys)}

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W)."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[2])

    def rows(self, rel_paths: Sequence[str], ks: Sequence[int] | None = None) -> np.ndarray:
        """Row indices of ``(rel_path, k)`` pairs (k = 0, the nearest image, by default).

        Raises:
            KeyError: a pair that is not in the cache (names it).
        """
        ks = [0] * len(rel_paths) if ks is None else ks
        try:
            return np.fromiter((self.row[f"{r}|{k}"] for r, k in zip(rel_paths, ks)), dtype=np.int64,
                               count=len(rel_paths))
        except KeyError as exc:
            raise KeyError(f"{self.path}: image {exc.args[0]!r} is not in the cache") from None

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        """(B,) rows -> float (B, 3, H, W) in [0, 1]."""
        pixels = torch.from_numpy(np.ascontiguousarray(self.pixels[rows]))
        return pixels.permute(0, 3, 1, 2).float().div_(255.0)


def cache_paths(cache_dir: Path, height: int, width: int, k: int) -> tuple[Path, Path]:
    """(``.npy``, ``.json``) of the training-image cache for images of size (height, width), ``k`` images per sub-map."""
    stem = f"train_images_{height}x{width}_k{k}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _training_keys(benchmark: Any, k_max: int) -> tuple[list[str], list[Path]]:
    keys: list[str] = []
    paths: list[Path] = []
    for t in sorted(benchmark.training_tuples.values(), key=lambda t: t.id):
        rel = t.rel_scan_filepath
        for k in range(min(k_max, max(1, benchmark.image_count(rel)))):
            keys.append(f"{rel}|{k}")
            paths.append(benchmark.image_path(rel, k))
    return keys, paths


def _reserve(path: Path) -> None:
    """Allocate every byte of the (sparse) memory-mapped file now, where the OS supports it."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as handle:
        try:
            os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system without it: write as before
                return
            raise


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: unreadable image ({exc})") from exc


def _load_checked(npy: Path, meta: dict[str, Any], meta_path: Path) -> ImageCache:
    shape = tuple(meta.get("shape", ()))
    try:
        pixels = np.load(npy, mmap_mode="r")
    except (ValueError, OSError, EOFError) as exc:
        raise ImageCacheError(f"{npy}: corrupt image cache ({exc}); delete it (and {meta_path.name}) to rebuild") from exc
    if pixels.dtype != np.uint8 or tuple(pixels.shape) != shape or len(meta.get("keys", [])) != shape[0]:
        raise ImageCacheError(f"{npy}: corrupt image cache (array {pixels.dtype} {tuple(pixels.shape)}, recorded "
                              f"uint8 {shape}); delete it (and {meta_path.name}) to rebuild")
    digest = file_sha256(npy)
    if digest != meta.get("sha256"):
        raise ImageCacheError(f"{npy}: corrupt image cache (sha256 {digest[:12]}… differs from the recorded "
                              f"{str(meta.get('sha256'))[:12]}…); delete it (and {meta_path.name}) to rebuild")
    return ImageCache(npy, pixels, list(meta["keys"]))


def open_training_image_cache(benchmark: Any, cache_dir: str | Path | None = None, k_max: int = 1,
                              progress: bool = True) -> ImageCache:
    """Open the cache of the benchmark's training images, building it when missing or stale.

    Args:
        benchmark: a loaded :class:`~distilvpr_lib.data.benchmark.Benchmark` with images.
        cache_dir: folder of the cache files (default ``<dataset_dir>/.cache``).
        k_max: images per sub-map to cache (``DataConfig.image_lidar_k``; 1 = the nearest only).
        progress: print what is being built and why.

    Raises:
        ImageCacheError: the cache exists but is corrupt (shape or sha256 mismatch).
        DataFormatError: an image cannot be decoded, or the images differ in size.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(benchmark.dataset_dir) / DEFAULT_CACHE_FOLDER
    keys, paths = _training_keys(benchmark, max(1, int(k_max)))
    if not keys:
        raise DataFormatError(f"{benchmark.dataset_dir}: no training images to cache")
    fingerprint = images_fingerprint(paths)
    first = _read_rgb(paths[0])
    height, width = int(first.shape[0]), int(first.shape[1])
    npy, meta_path = cache_paths(cache_dir, height, width, max(1, int(k_max)))
    if meta_path.is_file() and npy.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise ImageCacheError(f"{meta_path}: corrupt image cache index ({exc}); delete it to rebuild") from exc
        if meta.get("version") == CACHE_VERSION and meta.get("fingerprint") == fingerprint and meta.get("keys") == keys:
            return _load_checked(npy, meta, meta_path)
        if progress:
            print(f"image cache {npy} is stale (the images or the training set changed): rebuilding")
    elif progress:
        print(f"image cache: decoding {len(keys)} training images into {npy}")
    with atomic_output_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(keys), height, width, 3))
        _reserve(tmp)  # a full disk is an OSError here (-> "disk full"), not a SIGBUS while writing the pixels
        for i, path in enumerate(paths):
            pixels = first if i == 0 else _read_rgb(path)
            if pixels.shape != (height, width, 3):
                raise DataFormatError(f"{path}: image of size {pixels.shape[1]}x{pixels.shape[0]}, the others are "
                                      f"{width}x{height}; the cache needs one size")
            out[i] = pixels
        out.flush()
        del out
    meta = {"version": CACHE_VERSION, "shape": [len(keys), height, width, 3], "keys": keys,
            "fingerprint": fingerprint, "sha256": file_sha256(npy), "dataset_dir": str(benchmark.dataset_dir)}
    with atomic_write(meta_path, "w") as f:
        json.dump(meta, f)
    return _load_checked(npy, meta, meta_path)


class BatchImageAugment:
    """Colour jitter and random erasing of a whole batch, per-sample parameters, then ImageNet normalisation.

    Per sample (torch's global generator, as torchvision's transforms): brightness, contrast and
    saturation factors ~ U[1 − r, 1 + r] (``r = bcs_aug_rate``), a hue rotation by 2π·U[−h, h]
    (``h = hue_aug_rate``) of the chroma plane in YIQ space (a linear stand-in for torchvision's HSV hue
    shift), applied in that fixed order and clamped to [0, 1]; then with probability ``erasing_p`` one
    rectangle of area U[scale] of the image and log-uniform aspect ratio in ``ratio`` set to 0 (black,
    as the DataLoader path erases before normalising).
    """

    _RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])

    def __init__(self, bcs_aug_rate: float, hue_aug_rate: float, erasing_p: float = ERASING_PROBABILITY,
                 erasing_scale: tuple[float, float] = ERASING_SCALE, erasing_ratio: tuple[float, float] = ERASING_RATIO,
                 train: bool = True) -> None:
        self.r, self.h = float(bcs_aug_rate), float(hue_aug_rate)
        self.erasing_p, self.scale, self.ratio = float(erasing_p), erasing_scale, erasing_ratio
        self.train = train
        self.mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self._yiq2rgb = torch.linalg.inv(self._RGB2YIQ)

    def _factors(self, b: int) -> torch.Tensor:
        return (1.0 + (torch.rand(b) * 2.0 - 1.0) * self.r).view(b, 1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float in [0, 1] -> augmented and normalised (B, 3, H, W)."""
        if self.train:
            b = x.shape[0]
            gray_w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
            if self.r > 0:
                x = (x * self._factors(b)).clamp_(0, 1)
                mean = (x * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
                x = ((x - mean) * self._factors(b) + mean).clamp_(0, 1)
                gray = (x * gray_w).sum(1, keepdim=True)
                x = ((x - gray) * self._factors(b) + gray).clamp_(0, 1)
            if self.h > 0:
                theta = (torch.rand(b) * 2.0 - 1.0) * self.h * 2.0 * math.pi
                cos, sin = torch.cos(theta), torch.sin(theta)
                rot = torch.zeros(b, 3, 3)
                rot[:, 0, 0] = 1.0
                rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
                m = self._yiq2rgb @ rot @ self._RGB2YIQ  # (B, 3, 3)
                x = torch.einsum("bij,bjhw->bihw", m, x).clamp_(0, 1)
            if self.erasing_p > 0:
                x = self._erase(x)
        return (x - self.mean) / self.std

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        area = height * width
        chosen = torch.rand(b) < self.erasing_p
        target = area * (self.scale[0] + torch.rand(b) * (self.scale[1] - self.scale[0]))
        log_r = math.log(self.ratio[0]) + torch.rand(b) * (math.log(self.ratio[1]) - math.log(self.ratio[0]))
        aspect = torch.exp(log_r)
        h = torch.sqrt(target * aspect).round().clamp(1, height)
        w = torch.sqrt(target / aspect).round().clamp(1, width)
        top = (torch.rand(b) * (height - h + 1)).floor()
        left = (torch.rand(b) * (width - w + 1)).floor()
        ys = torch.arange(height).view(1, height, 1)
        xs = torch.arange(width).view(1, 1, width)
        inside = ((ys >= top.view(b, 1, 1)) & (ys < (top + h).view(b, 1, 1))
                  & (xs >= left.view(b, 1, 1)) & (xs < (left + w).view(b, 1, 1)) & chosen.view(b, 1, 1))
        return x.masked_fill(inside.unsqueeze(1), 0.0)


class CachedStudentLoader:
    """Training batches for the image-only student from an :class:`ImageCache`.

    Iterates its ``batch_sampler`` (a :class:`~distilvpr_lib.data.sampler.PositivePairBatchSampler`, whose
    ``set_epoch`` the trainer calls) and yields dicts with ``images`` (B, 3, H, W) augmented and
    normalised, ``labels`` (B,), ``positives_mask``/``negatives_mask`` (B, B), ``skip`` and ``rel_paths``.
    """

    def __init__(self, cache: ImageCache, benchmark: Any, batch_sampler: Any, augment: BatchImageAugment,
                 image_lidar_k: int = 1) -> None:
        self.cache, self.benchmark, self.batch_sampler, self.augment = cache, benchmark, batch_sampler, augment
        self.tuples = benchmark.training_tuples
        self.image_lidar_k = max(1, int(image_lidar_k))

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        from distilvpr_lib.data.collate import make_masks

        for indices in self.batch_sampler:
            rels = [self.tuples[int(i)].rel_scan_filepath for i in indices]
            ks = [0] * len(rels)
            if self.image_lidar_k > 1:
                ks = [int(torch.randint(min(self.image_lidar_k, max(1, self.benchmark.image_count(r))), ()))
                      for r in rels]
            images = self.augment(self.cache.batch(self.cache.rows(rels, ks)))
            labels = torch.tensor([int(i) for i in indices], dtype=torch.int64)
            positives, negatives = make_masks(labels.numpy(), self.tuples)
            yield {"images": images, "labels": labels, "positives_mask": positives, "negatives_mask": negatives,
                   "skip": not (bool(positives.any()) and bool(negatives.any())), "rel_paths": rels}
