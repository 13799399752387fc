"""The visual prior: pretrain-image at the smoke profile, and loading it into both image networks."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distilvpr_lib.config import apply_overrides, profile_config
from distilvpr_lib.engine.runs.prior import prior_synth_config, shared_buildings
from distilvpr_lib.models import build_student, build_teacher


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prior")
    out = root / "prior"
    proc = subprocess.run([sys.executable, "-m", "distilvpr_lib.cli", "pretrain-image", "--profile", "smoke",
                           "--dataset", str(root / "prior-world"), "--out", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "image prior ->" in proc.stdout
    return out


def test_prior_world_is_separately_seeded_and_shares_no_building() -> None:
    cfg = profile_config("smoke")
    synth = prior_synth_config(cfg)
    assert synth.seed == cfg.prior.seed != cfg.synth.seed
    overlap = shared_buildings(cfg.synth, synth)
    assert overlap["buildings_a"] > 0 and overlap["buildings_b"] > 0 and overlap["shared"] == 0
    # the check does find shared buildings when the worlds are the same
    assert shared_buildings(cfg.synth, cfg.synth)["shared"] == overlap["buildings_a"]
    with pytest.raises(ValueError, match="separately seeded"):
        prior_synth_config(apply_overrides(cfg, {"prior.seed": cfg.synth.seed}))


@pytest.mark.slow
def test_prior_file_initialises_teacher_and_student(prior_dir: Path) -> None:
    record = json.loads((prior_dir / "prior.json").read_text())
    assert record["shared_buildings_with_study_world"]["shared"] == 0
    weights = prior_dir / record["weights_file"]
    state = torch.load(weights, weights_only=True)
    assert "conv1.weight" in state and not any(k.startswith(("model.", "layer4", "fc")) for k in state)
    cfg = profile_config("smoke")
    model_cfg = dataclasses.replace(cfg.model, pretrained_image_weights=str(weights))
    student, teacher = build_student(model_cfg), build_teacher(model_cfg)
    for net in (student.model, teacher.image_fe.model):
        assert torch.equal(net.conv1.weight, state["conv1.weight"])
        assert torch.equal(net.layer3[0].bn1.running_mean, state["layer3.0.bn1.running_mean"])


def test_missing_or_mismatched_prior_names_the_file(tmp_path: Path) -> None:
    cfg = profile_config("smoke")
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        build_student(dataclasses.replace(cfg.model, pretrained_image_weights=str(missing)))
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv1.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(ValueError, match=f"{wrong}: not a matching ResNet state_dict"):
        build_student(dataclasses.replace(cfg.model, pretrained_image_weights=str(wrong)))


def test_notebook_config_resolves_the_prior_against_the_project_root(tmp_path: Path, monkeypatch) -> None:
    """The study profile names its prior relatively; a kernel started in notebooks/ must still find it."""
    from distilvpr_lib.config import notebook_config
    from distilvpr_lib.paths import project_path

    monkeypatch.chdir(tmp_path)
    cfg = notebook_config("study")
    assert Path(cfg.model.pretrained_image_weights) == project_path("teacher_weights/study-prior/image_prior.pth")
    assert Path(cfg.model.pretrained_image_weights).is_absolute()
    assert notebook_config("paper").model.pretrained_image_weights == "hub"  # the sentinel is not a path
