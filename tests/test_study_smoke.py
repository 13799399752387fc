"""The study profile end to end at a smoke size, through the CLI: a visual prior file, the teacher with losses on
its three heads, and a DistilVPR student on the decoded image cache with bfloat16 autocast and the per-epoch
diagnostics (gradient ratios, norms, hyperbolic clamp shares)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from distilvpr_lib.config import profile_config
from distilvpr_lib.engine.runs.prior import export_backbone
from distilvpr_lib.models import build_student

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "distilvpr_lib.cli", *args], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_study_profile_at_smoke_size(smoke_dataset: Path, tmp_path: Path) -> None:
    cfg = profile_config("study")
    assert cfg.data.image_cache and cfg.train.mixed_precision and cfg.train.amp_dtype == "bfloat16"
    assert tuple(cfg.train.teacher_loss_weights) == (1.0, 0.5, 0.5)
    prior = export_backbone(build_student(cfg.model.__class__(**{**cfg.model.__dict__,
                                                                 "pretrained_image_weights": None})),
                            tmp_path / "prior.pth")
    # the study profile with the smoke profile's network widths (the ResNet18 backbone, hence the prior, is the same)
    common = ["--dataset", str(smoke_dataset), "--profile", "study", "--quiet",
              "--set", f"model.pretrained_image_weights={prior}", f"data.image_cache_dir={tmp_path / 'cache'}",
              "model.cloud_planes=8_16_16", "model.cloud_dim=32", "model.image_dim=64", "model.student_dim=96"]
    _cli("train-teacher", *common, "--epochs", "1", "--out", str(tmp_path / "teacher"))
    teacher = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert teacher["loss_weights"] == {"triplet_embedding": 1.0, "triplet_cloud_embedding": 0.5,
                                       "triplet_image_embedding": 0.5}
    assert set(teacher["epochs"][0]["losses"]) >= {"triplet_embedding", "triplet_cloud_embedding",
                                                   "triplet_image_embedding"}
    _cli("distill", *common, "--teacher", str(tmp_path / "teacher"), "--method", "distilvpr", "--epochs", "2",
         "--seed", "0", "--out", str(tmp_path / "student"))
    student = json.loads((tmp_path / "student" / "metrics.json").read_text())
    stats = student["epochs"][-1]["stats"]
    for term in ("rkdg_distance", "rkdg_angle", "rkdg_geodesic", "cross_euclidean_st2ss"):
        assert stats[f"grad_ratio/{term}"] > 0.0, term
    assert stats["grad_norm/triplet"] > 0.0
    assert 0.0 <= stats["hyperbolic_clamp_student"] <= 1.0 and 0.0 <= stats["hyperbolic_clamp_teacher"] <= 1.0
    assert list((tmp_path / "cache").glob("train_images_*_k1.npy")), "the student did not use the image cache"
    assert not (smoke_dataset / ".cache").exists()  # the shared dataset stays untouched
    assert len(student["epochs"]) == 2 and student["epochs"][-1]["validation"] is not None
