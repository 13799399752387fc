"""The train-teacher / distill / evaluate subcommands: options, overrides, files, exit codes."""

from __future__ import annotations

import argparse
import json

import pytest

from distilvpr_lib.cli import main
from distilvpr_lib.commands.train_teacher import apply_cli_overrides, parse_key_values
from distilvpr_lib.config import ExperimentConfig, profile_config


def test_set_overrides_fields_and_terms():
    cfg = apply_cli_overrides(profile_config("smoke"),
                              ["train.batch_size=8", "curvature=0.01", "train.milestones=3_5",
                               "data.image_dir=none", "synth.n_eval_runs=4", "rkdg=2.5"], allow_terms=True)
    assert cfg.train.batch_size == 8 and cfg.distill.curvature == pytest.approx(0.01)
    assert cfg.train.milestones == (3, 5) and cfg.data.image_dir is None and cfg.synth.n_eval_runs == 4
    assert cfg.distill.terms == {"rkdg": 2.5}
    with pytest.raises(KeyError, match="unknown"):
        apply_cli_overrides(profile_config("smoke"), ["rkdg=1"])  # terms only where allowed
    with pytest.raises(KeyError, match="distillation term"):
        apply_cli_overrides(profile_config("smoke"), ["nonsense=1"], allow_terms=True)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["train.epochs"])


def test_bad_options_exit_2(smoke_dataset, tmp_path, capsys):
    assert main(["distill", "--dataset", str(smoke_dataset), "--profile", "smoke", "--out", str(tmp_path / "x")]) == 2
    assert "--teacher is required" in capsys.readouterr().err
    assert main(["train-teacher", "--dataset", str(smoke_dataset), "--profile", "smoke", "--set", "train.nope=1",
                 "--out", str(tmp_path / "y")]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["distill", "--dataset", str(smoke_dataset), "--profile", "smoke", "--method", "no_such_method",
                 "--out", str(tmp_path / "z")]) == 2
    assert "no_such_method" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_distill_nokd_then_evaluate(smoke_dataset, tmp_path, capsys):
    out = tmp_path / "runs" / "nokd"
    status = main(["distill", "--dataset", str(smoke_dataset), "--profile", "smoke", "--method", "nokd",
                   "--epochs", "1", "--seed", "3", "--set", "train.batch_size=8", "--quiet", "--out", str(out)])
    assert status == 0
    printed = capsys.readouterr().out
    assert "student (nokd)" in printed and "test" in printed and "final losses" in printed
    cfg = ExperimentConfig.load(out / "config.json")
    assert (cfg.train.epochs, cfg.train.seed, cfg.train.batch_size, cfg.distill.method) == (1, 3, 8, "nokd")
    assert cfg.data.dataset_dir == str(smoke_dataset)
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["final_losses"]) == {"triplet", "total"}
    assert metrics["validation"]["AR@1"] is not None and metrics["test"]["AR@1"] is not None

    assert main(["evaluate", "--model", str(out), "--split", "validation", "--json", "--quiet",
                 "--device", "cpu", "--save", str(tmp_path / "val.npz")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["split"] == "validation" and summary["kind"] == "student"
    assert summary["AR@1"] == pytest.approx(metrics["validation"]["AR@1"])
    assert (tmp_path / "val.npz").is_file()


@pytest.mark.slow
def test_train_teacher_distill_evaluate(smoke_dataset, tmp_path, capsys):
    teacher = tmp_path / "teacher_weights" / "smoke"
    assert main(["train-teacher", "--dataset", str(smoke_dataset), "--profile", "smoke", "--backend", "torch",
                 "--quiet", "--out", str(teacher)]) == 0
    assert "teacher: selected epoch" in capsys.readouterr().out
    for name in ("config.json", "teacher.pt", "metrics.json", "teacher_cache.pt", "test_results.npz"):
        assert (teacher / name).is_file(), name
    run = tmp_path / "runs" / "distilvpr"
    assert main(["distill", "--dataset", str(smoke_dataset), "--teacher", str(teacher), "--profile", "smoke",
                 "--method", "distilvpr", "--set", "rkdg=1", "cross_spherical_st2ss=0", "--epochs", "1",
                 "--quiet", "--out", str(run)]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["loss_weights"]["rkdg_distance"] == pytest.approx(1.0)
    assert "cross_spherical_st2ss" not in metrics["final_losses"]
    assert "cross_euclidean_st2ss" in metrics["final_losses"]
    capsys.readouterr()
    assert main(["evaluate", "--model", str(teacher), "--quiet"]) == 0
    assert "teacher" in capsys.readouterr().out


def test_subcommands_registered():
    from distilvpr_lib.cli import build_parser

    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"train-teacher", "distill", "evaluate"} <= set(actions[0].choices)
