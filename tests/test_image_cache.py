"""The decoded training-image cache (stale rebuilt, corrupt refused) and the batch augmentation."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distilvpr_lib.config import IMAGENET_MEAN, IMAGENET_STD, profile_config
from distilvpr_lib.data.benchmark import Benchmark
from distilvpr_lib.data.image_cache import (BatchImageAugment, CachedStudentLoader, ImageCacheError, cache_paths,
                                            open_training_image_cache)
from distilvpr_lib.data.sampler import PositivePairBatchSampler


@pytest.fixture()
def dataset(smoke_dataset: Path, tmp_path: Path) -> Path:
    out = tmp_path / "smoke"
    shutil.copytree(smoke_dataset, out)
    return out


def _benchmark(path: Path) -> Benchmark:
    return Benchmark.load(path)


def test_cache_holds_the_decoded_pngs_and_is_reused(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _benchmark(dataset)
    cache = open_training_image_cache(bench, progress=True)
    assert "decoding" in capsys.readouterr().out
    rel = next(iter(bench.training_tuples.values())).rel_scan_filepath
    expected = np.asarray(bench.read_image(rel, 0))
    row = cache.rows([rel])[0]
    assert np.array_equal(np.asarray(cache.pixels[row]), expected)
    assert cache.pixels.shape[0] == len(bench.training_tuples)
    again = open_training_image_cache(bench, progress=True)
    assert capsys.readouterr().out == ""  # neither rebuilt nor stale
    assert again.keys == cache.keys
    batch = again.batch(again.rows([rel, rel]))
    assert batch.shape == (2, 3, *expected.shape[:2]) and batch.dtype == torch.float32
    assert torch.allclose(batch[0], torch.from_numpy(expected.copy()).permute(2, 0, 1).float() / 255)


def test_stale_cache_is_rebuilt(dataset: Path, capsys: pytest.CaptureFixture) -> None:
    bench = _benchmark(dataset)
    cache = open_training_image_cache(bench, progress=False)
    rel = cache.keys[0].split("|")[0]
    image = bench.image_path(rel, 0)
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the image changed (touched)
    open_training_image_cache(bench, progress=True)
    assert "stale" in capsys.readouterr().out


def test_corrupt_cache_is_refused_naming_the_file(dataset: Path) -> None:
    bench = _benchmark(dataset)
    cache = open_training_image_cache(bench, progress=False)
    npy = cache.path
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF  # one flipped pixel byte
    npy.write_bytes(bytes(data))
    with pytest.raises(ImageCacheError, match=rf"{npy.name}: corrupt image cache \(sha256"):
        open_training_image_cache(bench, progress=False)
    npy.write_bytes(bytes(data[: len(data) // 2]))  # truncated
    with pytest.raises(ImageCacheError, match="corrupt image cache"):
        open_training_image_cache(bench, progress=False)
    meta = npy.with_suffix(".json")
    meta.write_text("{not json")
    with pytest.raises(ImageCacheError, match=f"{meta.name}: corrupt image cache index"):
        open_training_image_cache(bench, progress=False)


def test_batch_augment_per_sample_and_normalised() -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 3, 12, 16)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    clean = BatchImageAugment(0.2, 0.1, train=False)(x)
    assert torch.allclose(clean, (x - mean) / std)
    out = BatchImageAugment(0.2, 0.1, erasing_p=0.5)(x)
    pixels = out * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    erased = (pixels.abs().sum(1) < 1e-6).flatten(1).float().mean(1)  # share of black pixels per image
    n_erased = int((erased > 0.05).sum())
    assert 16 <= n_erased <= 48  # p = 0.5 of 64 images
    assert erased.max() <= 0.5  # area scale at most 0.4 (rounding)
    # per-sample parameters: images of one input differ after augmentation
    same = BatchImageAugment(0.2, 0.1, erasing_p=0.0)(x[:1].repeat(8, 1, 1, 1))
    assert (same[1:] - same[:1]).abs().flatten(1).amax(1).min() > 1e-3
    # hue rotation by 0 and unit factors are the identity
    ident = BatchImageAugment(0.0, 0.0, erasing_p=0.0)(x)
    assert torch.allclose(ident, clean, atol=1e-6)


def test_cached_loader_batches_match_the_tuples(dataset: Path) -> None:
    cfg = profile_config("smoke")
    bench = _benchmark(dataset)
    cache = open_training_image_cache(bench, progress=False)
    sampler = PositivePairBatchSampler(bench.training_tuples, cfg.train.batch_size, seed=0)
    loader = CachedStudentLoader(cache, bench, sampler, BatchImageAugment(0.2, 0.1))
    batches = list(loader)
    assert len(batches) == len(loader) == len(sampler)
    b = batches[0]
    n = len(b["rel_paths"])
    assert b["images"].shape[0] == n and b["positives_mask"].shape == (n, n)
    for i, j in zip(*torch.nonzero(b["positives_mask"], as_tuple=True)):
        ti = bench.training_tuples[int(b["labels"][i])]
        assert int(b["labels"][j]) in set(int(p) for p in ti.positives)
    assert json.loads(cache_paths(cache.path.parent, *cache.image_size, 1)[1].read_text())["version"] == 1
