"""The project's error types and the CLI's error boundary (issue 14), and the shared smoke dataset."""

from __future__ import annotations

import json
from pathlib import Path


def test_smoke_dataset_fixture_is_a_complete_generated_benchmark(smoke_dataset: Path) -> None:
    from distilvpr_lib.data.benchmark import Benchmark

    benchmark = Benchmark.load(smoke_dataset)
    assert json.loads((smoke_dataset / "synth_complete.json").read_text())
    assert benchmark.layout == "oxford" and benchmark.has_images
    assert len(benchmark.training_tuples) >= 16  # two batches of the smoke profile
    assert benchmark.has_split("test") and benchmark.has_split("validation")
    assert len(benchmark.run_names) == 3  # the smoke profile's n_runs
