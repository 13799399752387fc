"""Inputs shared by tests/test_viz.py and tests/test_browser.py: retrieval results (their dataset is the
session's ``smoke_dataset`` fixture of conftest.py).

* :func:`descriptor_results` — a TEST-ONLY stand-in for a model: real retrieval results (the real
  PointNetVLAD protocol, ``engine.evaluation.evaluate.evaluate_retrieval``) of a non-learned descriptor, the
  grey thumbnail of each sub-map's image (plus optional noise for a worse "model"). Fast and
  deterministic, with both right and wrong retrievals, for unit tests of the pictures and widgets.
* :func:`train_smoke_student` — a REAL model: a no-KD student trained one epoch at the smoke
  profile by ``engine.runs.student_run.distill_student``; its folder holds ``test_results.npz`` (notebook 05's
  input). Used by the slow notebook and browser tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def descriptor_results(benchmark, split: str = "test", noise: float = 0.0, seed: int = 0, top_k: int = 5):
    """RetrievalResults of the grey-thumbnail descriptor (see the module docstring): test-only stand-in."""
    from distilvpr_lib.engine.evaluation.evaluate import evaluate_retrieval

    rng = np.random.default_rng(seed)

    def embed(run_set):
        rows = []
        for k in range(len(run_set)):
            image = benchmark.read_image(run_set[k]["query"]).convert("L").resize((8, 6))
            v = np.asarray(image, dtype=np.float32).reshape(-1) / 255.0
            rows.append(v + rng.normal(0.0, noise, v.shape).astype(np.float32))
        return np.asarray(rows, dtype=np.float32).reshape(len(run_set), 48)

    database = [embed(s) for s in benchmark.database_sets(split)]
    queries = [embed(s) for s in benchmark.query_sets(split)]
    return evaluate_retrieval(database, queries, benchmark.query_sets(split), top_k=top_k,
                              run_names=benchmark.set_run_names(split))


def train_smoke_student(dataset: Path, out: Path, epochs: int = 1, seed: int = 0) -> Path:
    """Train a no-KD student at the smoke profile (real model; writes ``out/test_results.npz``)."""
    from distilvpr_lib.config import apply_overrides, profile_config
    from distilvpr_lib.engine.runs.student_run import distill_student

    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), "train.epochs": epochs,
                                                    "train.seed": seed})
    distill_student(cfg, None, out, method="nokd", progress=False)
    return Path(out)
