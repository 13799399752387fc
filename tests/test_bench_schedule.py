"""benchmarks/bench_schedule.py (issue 26 item 4): its numbers by hand, on fake run folders; only validation read."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_schedule", ROOT / "benchmarks" / "bench_schedule.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_numbers_by_hand(bench):
    curve = [10.0, 20.0, 30.0, 30.0, 31.0, 29.0, 33.0, 35.0]  # 8 epochs: the last quarter is epochs 7-8
    assert bench.quarter(8) == 2 and bench.quarter(32) == 8 and bench.quarter(3) == 1
    assert bench.last_quarter_mean(curve) == 34.0
    assert bench.last_quarter_change(curve) == pytest.approx(2.0)  # slope 2 per epoch × 1 epoch
    assert bench.last_quarter_change([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 5.0, 6.0, 7.0, 8.0]) == \
        pytest.approx(2.0)  # last 3 epochs 6, 7, 8: slope 1 × 2 epochs
    assert bench.protocol_gain(curve) == 35.0 - 31.0
    # running means of 3 at epochs 3..8: 20, 26.67, 30.33, 30, 31, 32.33
    assert bench.epochs_to_target(curve, 30.0, 3) == 5
    assert bench.epochs_to_target(curve, 32.0, 3) == 8
    assert bench.epochs_to_target(curve, 32.5, 3) is None
    assert bench.epochs_to_target(curve, 30.0, 1) == 3


def test_without_a_dataset_it_skips(bench, capsys):  # `make bench` runs every script without arguments
    assert bench.main([]) == 0
    assert "nothing measured" in capsys.readouterr().out


def test_parse_schedule(bench):
    s = bench.parse_schedule("cosine-e16:16:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones=")
    assert (s.name, s.epochs) == ("cosine-e16", 16)
    assert s.sets == ("train.lr_schedule=cosine", "train.warmup_epochs=1", "train.milestones=")
    assert bench.parse_schedule("step:32").sets == ()
    for bad in ("step", "a/b:3", "step:x", "step:0", "step:3:train.seed"):
        with pytest.raises(ValueError):
            bench.parse_schedule(bad)


def _fake(folder: Path, seed: int, curve: list[float], **train) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"distill": {"method": "nokd"}, "train": {
        "seed": seed, "epochs": len(curve), "milestones": [len(curve) * 3 // 4], **train}}))
    (folder / "metrics.json").write_text(json.dumps({
        "status": "complete", "wall_time_s": 100.0 * len(curve), "seconds_per_epoch": 3.0,
        "epochs": [{"epoch": i + 1, "validation": {"AR@1": v}} for i, v in enumerate(curve)],
        "test": {"AR@1": 77.77}, "validation": {"AR@1": max(curve)}}))


def test_report_reads_validation_only(bench, tmp_path, capsys):
    step = {0: [10.0] * 4 + [30.0] * 4, 1: [10.0] * 4 + [32.0] * 4}  # plateaus 30 and 32: mean 31, sd sqrt(2)
    for seed, curve in step.items():
        _fake(tmp_path / f"step-seed{seed}", seed, curve)
        _fake(tmp_path / f"cos-seed{seed}", seed, [10.0, 29.0, 30.0, 31.0], lr_schedule="cosine", milestones=[],
              warmup_epochs=1)
    dataset = tmp_path / "world"
    dataset.mkdir()
    (dataset / "training_queries_baseline.pickle").write_bytes(b"")
    args = [str(dataset), "--runs", str(tmp_path), "--seeds", "0", "1", "--report-only",
            "--schedule", "step:8:train.milestones=6",
            "--schedule", "cos:4:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones="]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    target = 31.0 - math.sqrt(2.0)  # 29.59
    assert f"mean 31.00, sd {math.sqrt(2.0):.2f}" in out and f"= {target:.2f}" in out
    # cosine: running means 23, 30 -> epoch 4 reaches 29.59; step seed 0: (10+30+30)/3 = 23.3 at 6, 30 at 7
    # paired (its seed's plateau, no tolerance): cos seed 0 -> 30 at epoch 4; cos seed 1 never reaches 32
    assert "| cos | 0 | 4 | 4 | 4 |" in out and "| cos | 1 | 4 | 4 | - |" in out
    assert "| step | 0 | 8 | 7 | 7 |" in out and "| step | 1 | 8 | 7 | 7 |" in out
    assert "77.77" not in out  # the test split is never printed
    # a folder of another schedule under the name is refused, not read
    _fake(tmp_path / "other-seed0", 0, [1.0, 2.0])
    assert bench.main([*args[:7], "--schedule", "step:8:train.milestones=6",
                       "--schedule", "other:2:train.lr_schedule=cosine,train.milestones="]) == 1


def test_a_failing_run_stops_with_one_line_naming_its_log(bench, tmp_path, capsys):
    dataset = tmp_path / "world"
    dataset.mkdir()
    (dataset / "training_queries_baseline.pickle").write_bytes(b"")  # the distill command refuses it
    with pytest.raises(SystemExit) as info:
        bench.main([str(dataset), "--runs", str(tmp_path / "runs"), "--seeds", "0", "--schedule", "step:2"])
    message = str(info.value.code)
    log = tmp_path / "runs" / "step-seed0.distill.log"
    assert "\n" not in message and str(log) in message and "the distill command failed (exit 1)" in message
    assert "corrupt or unsupported pickle" in message and log.is_file()
    assert "distill" in capsys.readouterr().out  # the progress line, nothing of the command's own output


def test_folder_check_compares_every_item_in_the_recorded_type(bench, tmp_path):
    _fake(tmp_path / "hi-seed0", 0, [1.0, 2.0, 3.0, 4.0], lr_schedule="cosine", milestones=[], warmup_epochs=1,
          image_lr=0.001)
    hi = bench.parse_schedule("hi:4:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones=,"
                              "train.image_lr=1e-3")
    assert bench.folder_problem(tmp_path / "hi-seed0", hi, 0) is None
    lo = bench.parse_schedule("hi:4:train.lr_schedule=cosine,train.warmup_epochs=1,train.milestones=,"
                              "train.image_lr=0.0003")
    assert "holds train.image_lr=0.001, the schedule 'hi' asks for 0.0003" in bench.folder_problem(
        tmp_path / "hi-seed0", lo, 0)
    assert "train.seed" in bench.folder_problem(tmp_path / "hi-seed0", hi, 1)
