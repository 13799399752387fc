"""Method names ``<preset>[_x<α>][_lr<β>][_norm]`` (PROTOCOL §3): one name runs one configuration everywhere —
``distilvpr distill --method``, a grid row, notebook 03 — and a run whose fields contradict its name is refused."""

from __future__ import annotations

import pytest

from distilvpr_lib.config import (MethodName, apply_overrides, method_name_problem, notebook_config,
                                  parse_method_name, profile_config)
from distilvpr_lib.losses.distiller import PRESETS, resolve_term_weights


@pytest.mark.parametrize("name, parsed", [
    ("nokd", MethodName("nokd")),
    ("rkd_x10_norm", MethodName("rkd", 10.0, 1.0, True)),
    ("distilvpr_x0.1", MethodName("distilvpr", 0.1)),
    ("nokd_lr0.5_norm", MethodName("nokd", 1.0, 0.5, True)),
    ("distilvpr_boreas", MethodName("distilvpr_boreas")),
    ("self_E", MethodName("self_E")),
    ("cross_only_norm", MethodName("cross_only", task_normalize=True)),
])
def test_parse_and_canonical_name(name, parsed):
    assert parse_method_name(name) == parsed
    assert parsed.name == name


@pytest.mark.parametrize("bad", ["", "rkd_norm_x10", "_x10", "rkd_x0", "rkd_x-1", "rkd x10"])
def test_bad_names_are_refused(bad):
    with pytest.raises(ValueError):
        parse_method_name(bad)


def test_every_preset_parses_as_itself():
    for preset in PRESETS:
        assert parse_method_name(preset) == MethodName(preset), preset


def test_weight_scale_multiplies_every_weight_of_the_preset():
    base = profile_config("smoke")
    plain = resolve_term_weights(apply_overrides(base, {"distill.method": "distilvpr"}).distill)
    scaled = resolve_term_weights(apply_overrides(base, {"distill.method": "distilvpr_x0.1"}).distill)
    assert plain["rkdg_distance"] == 10.0 and plain["cross_euclidean_st2ss"] == pytest.approx(0.1)
    assert set(scaled) == set(plain)
    for term, weight in plain.items():
        assert scaled[term] == pytest.approx(0.1 * weight), term
    # grouped losses: the group weight is scaled, the internal mix (self_E pins angle and geodesic to 0) is kept
    self_e = resolve_term_weights(apply_overrides(base, {"distill.method": "self_E_x10"}).distill)
    assert self_e["rkdg_distance"] == pytest.approx(100.0) and self_e["rkdg_angle"] == 0.0
    # explicit terms still override by name after the scale
    terms = resolve_term_weights(apply_overrides(base, {"distill.method": "rkd_x10", "distill.terms": {"rkd": 2.0}}).distill)
    assert terms["rkd_distance"] == 2.0


def test_name_sets_the_fields_it_implies():
    cfg = apply_overrides(profile_config("study"), {"distill.method": "nokd_lr2_norm"})
    assert cfg.train.task_normalize is True
    assert cfg.train.image_lr == pytest.approx(2 * profile_config("study").train.image_lr)
    # idempotent: applying overrides again (notebook_config does twice) does not scale the rate twice
    again = apply_overrides(cfg, {"distill.method": "nokd_lr2_norm"})
    assert again.train.image_lr == pytest.approx(cfg.train.image_lr)
    nb = notebook_config("smoke", {"distill.method": "kd_norm"})
    assert nb.train.task_normalize is True and method_name_problem(nb) is None


def test_contradicting_overrides_are_refused():
    with pytest.raises(ValueError, match="task_normalize"):
        apply_overrides(profile_config("smoke"), {"distill.method": "kd_norm", "train.task_normalize": False})
    with pytest.raises(ValueError, match="image_lr"):
        apply_overrides(profile_config("smoke"), {"distill.method": "nokd_lr2", "train.image_lr": 1e-3})
    with pytest.raises(KeyError, match="no distillation weight"):
        resolve_term_weights(apply_overrides(profile_config("smoke"), {"distill.method": "nokd_x10"}).distill)
    with pytest.raises(KeyError, match="known presets"):
        resolve_term_weights(apply_overrides(profile_config("smoke"), {"distill.method": "rkdd_norm"}).distill)


def test_a_config_that_contradicts_its_name_is_named():
    cfg = apply_overrides(profile_config("smoke"), {"distill.method": "rkd_norm"})
    cfg.train.task_normalize = False  # e.g. an edited config.json
    assert "task_normalize" in method_name_problem(cfg)
    cfg = apply_overrides(profile_config("smoke"), {"distill.method": "nokd_lr0.5"})
    cfg.train.image_lr = profile_config("smoke").train.image_lr
    assert "learning rate" in method_name_problem(cfg)
    assert method_name_problem(apply_overrides(profile_config("smoke"), {"distill.method": "rkd_x10"})) is None


def test_the_cli_refuses_a_set_that_contradicts_the_method_name(tmp_path):
    """``--set`` is not silently overridden by the name, nor the name by ``--set``: exit 2, one line, nothing written."""
    import subprocess
    import sys

    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "distilvpr_lib.cli", "distill", "--profile", "smoke", "--dataset",
                           str(tmp_path / "data"), "--method", "kd_norm", "--set", "train.task_normalize=false",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == ["error: method 'kd_norm' says _norm but train.task_normalize is false"]
    assert not out.exists()
