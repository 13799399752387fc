"""The smoke profile trains a teacher end to end (engine.runs.teacher_run.train_teacher, one epoch) with each
sparse backend: the pure-PyTorch one and MinkowskiEngine (``minkowski`` marker)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.engine.train.checkpoint import load_weights
from distilvpr_lib.engine.runs.teacher_run import train_teacher

HAS_MINKOWSKI = importlib.util.find_spec("MinkowskiEngine") is not None


@pytest.fixture(scope="module")
def toy_dataset(tmp_path_factory):
    from distilvpr_lib.data.toy import write_toy_oxford_dataset

    return write_toy_oxford_dataset(tmp_path_factory.mktemp("toy") / "ds", n_runs=3, route_length_m=300.0)


@pytest.mark.parametrize("backend", [
    "torch",
    pytest.param("minkowski", marks=[
        pytest.mark.minkowski,
        pytest.mark.skipif(not HAS_MINKOWSKI, reason="MinkowskiEngine not built (python scripts/build_minkowski.py)"),
    ]),
])
def test_smoke_profile_trains_a_teacher_with_each_backend(backend, toy_dataset, tmp_path):
    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(toy_dataset),
                                                    "model.sparse_backend": backend, "train.epochs": 1})
    folder = tmp_path / f"teacher-{backend}"
    metrics = train_teacher(cfg, folder, progress=False)

    assert metrics["status"] == "complete" and len(metrics["epochs"]) == 1
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model"]["sparse_backend"] == backend
    losses = metrics["epochs"][0]["losses"]
    assert math.isfinite(losses["total"]) and losses["total"] > 0.0
    # a trained teacher beats a random ranking of each database by far (fixed seed; chance from the set sizes)
    from distilvpr_lib.data.benchmark import Benchmark
    from distilvpr_lib.engine.evaluation.evaluate import chance_recall_at_n

    benchmark = Benchmark.load(toy_dataset)
    chance = chance_recall_at_n(benchmark.database_sets("test"), benchmark.query_sets("test"), n=1)
    assert 0.0 < chance < 50.0
    assert metrics["test"]["AR@1"] > 2 * chance, (metrics["test"]["AR@1"], chance)
    # training moved the cloud branch away from its initialisation (gradients reached the sparse convs)
    weights = load_weights(folder / "teacher.pt")
    from distilvpr_lib.engine.train.seeding import seed_everything
    from distilvpr_lib.models import build_teacher

    seed_everything(cfg.train.seed)
    initial = build_teacher(cfg.model).state_dict()
    cloud_keys = [k for k in weights if k.startswith("cloud_fe.") and weights[k].is_floating_point()
                  and "running" not in k]
    assert cloud_keys, "no cloud-branch parameters in the saved teacher"
    assert any(not torch.allclose(weights[k], initial[k]) for k in cloud_keys if k in initial)
