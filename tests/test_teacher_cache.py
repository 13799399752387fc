"""Teacher embedding cache: one entry per training tuple, deterministic, clean vs augmented view,
file format, lookup, staleness."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from distilvpr_lib.config import profile_config
from distilvpr_lib.engine.runs.teacher_cache import (
    CACHE_FORMAT,
    TeacherCache,
    build_teacher_cache,
    cache_file_name,
    model_config_hash,
)


@pytest.fixture(scope="module")
def toy_benchmark(smoke_dataset):
    from distilvpr_lib.data.benchmark import Benchmark

    return Benchmark.load(smoke_dataset)


class FakeTeacher(nn.Module):
    """Uses both the cloud coordinates and the image, so cloud and image augmentation both show."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():  # same weights every time, global generator untouched
            torch.manual_seed(0)
            self.image_fe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.cloud_fe = nn.Linear(3, 4)

    def forward(self, batch):
        coords = batch["coords"].float()
        batch_index = coords[:, 0].long()
        pooled = torch.zeros(batch["images"].shape[0], 3).index_add_(0, batch_index, coords[:, 1:])
        counts = torch.bincount(batch_index, minlength=batch["images"].shape[0]).clamp_min(1)[:, None]
        return {"embedding": torch.cat([self.cloud_fe(pooled / counts), self.image_fe(batch["images"])], dim=1)}


def _build(benchmark, clean=True, seed=7, batch_size=8):
    cfg = profile_config("smoke")
    return build_teacher_cache(FakeTeacher(), benchmark, cfg.data, batch_size, "cpu", clean=clean, seed=seed,
                               progress=False, metadata={"teacher_weights_sha256": "abc"})


def test_one_entry_per_training_tuple_and_deterministic(toy_benchmark):
    cache = _build(toy_benchmark)
    tuples = toy_benchmark.training_tuples
    assert len(cache) == len(tuples) > 0
    assert cache.rel_paths == [tuples[i].rel_scan_filepath for i in sorted(tuples)]
    assert cache.embeddings.shape == (len(tuples), 8) and cache.embeddings.dtype == torch.float32
    assert cache.metadata["count"] == len(tuples) and cache.metadata["clean"] is True
    assert cache.metadata["teacher_weights_sha256"] == "abc"
    again = _build(toy_benchmark, batch_size=5)  # another batching: same values (eval mode)
    assert again.rel_paths == cache.rel_paths
    torch.testing.assert_close(again.embeddings, cache.embeddings, rtol=1e-5, atol=1e-6)


def test_augmented_view_is_seeded_and_leaves_global_rng_alone(toy_benchmark):
    clean = _build(toy_benchmark)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    expected = (torch.rand(2), np.random.rand(2), random.random())
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    a = _build(toy_benchmark, clean=False, seed=7)
    after = (torch.rand(2), np.random.rand(2), random.random())
    assert torch.equal(expected[0], after[0]) and np.array_equal(expected[1], after[1]) and expected[2] == after[2]
    b = _build(toy_benchmark, clean=False, seed=7)
    c = _build(toy_benchmark, clean=False, seed=8)
    assert torch.equal(a.embeddings, b.embeddings)
    assert not torch.allclose(a.embeddings, clean.embeddings)
    assert not torch.allclose(a.embeddings, c.embeddings)
    assert a.metadata["clean"] is False and a.metadata["seed"] == 7


def test_file_format_roundtrip_and_lookup(toy_benchmark, tmp_path):
    cache = _build(toy_benchmark)
    path = cache.save(tmp_path / cache_file_name(True, 7))
    assert path.name == "teacher_cache.pt" and cache_file_name(False, 3) == "teacher_cache_augmented_seed3.pt"
    raw = torch.load(path, weights_only=True)  # plain dict of tensors: safe to load
    assert raw["format"] == CACHE_FORMAT
    assert set(raw["embeddings"]) == set(cache.rel_paths)
    first = cache.rel_paths[0]
    assert raw["embeddings"][first].shape == (cache.dim,)
    assert raw["metadata"]["count"] == len(cache)
    loaded = TeacherCache.load(path)
    assert loaded.rel_paths == cache.rel_paths and torch.equal(loaded.embeddings, cache.embeddings)
    batch = [cache.rel_paths[3], cache.rel_paths[0], cache.rel_paths[3]]
    assert torch.equal(loaded.lookup(batch), cache.embeddings[[3, 0, 3]])
    assert torch.equal(loaded.as_dict()[first], cache.embeddings[0])
    with pytest.raises(KeyError, match="not in the teacher cache"):
        loaded.lookup(["nope.bin"])
    norms = cache.embeddings.norm(dim=1)
    assert loaded.norm_stats() == pytest.approx({"mean": float(norms.mean()), "max": float(norms.max())})
    (tmp_path / "bad.pt").write_bytes(b"not a cache")
    with pytest.raises(ValueError, match="bad.pt"):
        TeacherCache.load(tmp_path / "bad.pt")


def test_model_config_hash_tracks_architecture():
    cfg = profile_config("smoke")
    other = profile_config("smoke")
    other.model.cloud_dim = 64
    assert model_config_hash(cfg.model) == model_config_hash(profile_config("smoke").model)
    assert model_config_hash(cfg.model) != model_config_hash(other.model)
