"""Inputs shared by tests/test_viz.py and tests/test_browser.py: a smoke dataset, retrieval results.

* :func:`make_smoke_dataset` — the generator's smoke profile (``distilvpr synth --profile smoke``)
  when the ``synth`` command exists, else the hand-made toy dataset of ``distilvpr_lib.data.toy``.
* :func:`descriptor_results` — a TEST-ONLY stand-in for a model: real retrieval results (the real
  PointNetVLAD protocol, ``engine.evaluate.evaluate_retrieval``) of a non-learned descriptor, the
  grey thumbnail of each sub-map's image (plus optional noise for a worse "model"). Fast and
  deterministic, with both right and wrong retrievals, for unit tests of the pictures and widgets.
* :func:`train_smoke_student` — a REAL model: a no-KD student trained one epoch at the smoke
  profile by ``engine.student_run.distill_student``; its folder holds ``test_results.npz`` (notebook 05's
  input). Used by the slow notebook and browser tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np


def synth_available() -> bool:
    """Whether the ``distilvpr synth`` command exists yet."""
    return importlib.util.find_spec("distilvpr_lib.commands.synth") is not None


def make_smoke_dataset(root: Path) -> Path:
    """Write a smoke dataset into ``root`` (generated when possible, else the toy dataset)."""
    root = Path(root)
    if synth_available():
        from distilvpr_lib.cli import main

        status = main(["synth", "--profile", "smoke", "--out", str(root), "--seed", "0"])
        if status != 0:
            raise RuntimeError(f"distilvpr synth --profile smoke --out {root} exited with {status}")
        return root
    from distilvpr_lib.data.toy import write_toy_oxford_dataset

    return write_toy_oxford_dataset(root, n_runs=3, route_length_m=400.0, image_size=(32, 24))


def descriptor_results(benchmark, split: str = "test", noise: float = 0.0, seed: int = 0, top_k: int = 5):
    """RetrievalResults of the grey-thumbnail descriptor (see the module docstring): test-only stand-in."""
    from distilvpr_lib.engine.evaluate import evaluate_retrieval

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
    from distilvpr_lib.engine.student_run import distill_student

    cfg = apply_overrides(profile_config("smoke"), {"data.dataset_dir": str(dataset), "train.epochs": epochs,
                                                    "train.seed": seed})
    distill_student(cfg, None, out, method="nokd", progress=False)
    return Path(out)
