"""Distiller, presets, weight resolution, gradient paths, and golden values of every loss.

Golden values: every registered loss (all its terms), every preset through the Distiller, the
triplet losses and a few option variants are pinned to numbers computed once on fixed seeded
float64 inputs (B = 8, D = 12, with masks) and stored in ``tests/fixtures/golden_losses.json``.
A change that alters any loss fails ``test_golden_values``. To regenerate deliberately::

    DISTILVPR_REGENERATE_GOLDEN=1 .venv/bin/pytest tests/test_distiller.py -k golden
    # or: .venv/bin/python tests/test_distiller.py --regenerate
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from distilvpr_lib.config import DistillConfig
from distilvpr_lib.losses.distiller import PRESETS, Distiller, known_weight_names, resolve_term_weights
from distilvpr_lib.losses.registry import LOSSES
from distilvpr_lib.losses.triplet import BatchHardTripletLoss, teacher_task_loss

GOLDEN_PATH = Path(__file__).resolve().parent / "fixtures" / "golden_losses.json"
REGENERATE_ENV = "DISTILVPR_REGENERATE_GOLDEN"
GOLDEN_SEED = 20240415

#: Option variants pinned in the golden file besides the defaults: name -> (DistillConfig kwargs, method).
VARIANTS: dict[str, tuple[dict, str]] = {
    "afd_faithful_index_mismatch": ({"afd_faithful_index_mismatch": True}, "afd"),
    "csd_use_kd": ({"csd_use_kd": True}, "csd"),
    "epcnet_kldiv_log_softmax": ({"epcnet_loss_type": "kldiv", "epcnet_norm_fn": "log_softmax"}, "epcnet"),
    "cross_l1": ({"cross_loss_type": "l1"}, "cross_only"),
    "cross_log_softmax": ({"cross_norm_fn": "log_softmax"}, "cross_only"),
    "cross_softmax_nodivide": ({"cross_norm_fn": "softmax", "cross_sim_divide": False}, "cross_only"),
    "id_topoin": ({"logit_mapping": "id_topoin"}, "distilvpr"),
    "topoincare": ({"logit_mapping": "topoincare"}, "distilvpr"),
    "curvature_1": ({"curvature": 1.0}, "distilvpr"),
    "curvature_0.01": ({"curvature": 0.01}, "distilvpr"),
    "kd_temperature_4": ({"kd_temperature": 4.0}, "kd"),
    "cc_order_3": ({"cc_order": 3, "cc_gamma": 0.2}, "cc"),
    "lsdnet_smoothl1": ({"lsdnet_loss_type": "smoothl1"}, "lsdnet"),
}


def golden_inputs(dtype: torch.dtype = torch.float64):
    """Seeded student (8, 12), teacher (8, 12) and masks (pairs of positives; |label gap| ≥ 2 negative)."""
    g = torch.Generator().manual_seed(GOLDEN_SEED)
    student = torch.randn(8, 12, generator=g, dtype=torch.float64) * 1.5
    teacher = 0.6 * student + 2.0 * torch.randn(8, 12, generator=g, dtype=torch.float64)
    labels = torch.arange(8) // 2
    positives = (labels[:, None] == labels[None, :]) & ~torch.eye(8, dtype=torch.bool)
    negatives = (labels[:, None] - labels[None, :]).abs() >= 2
    return student.to(dtype), teacher.to(dtype), positives, negatives


def compute_golden_values(dtype: torch.dtype = torch.float64) -> dict[str, float]:
    """All pinned numbers, keyed ``loss/<term>``, ``preset/<method>/<term>``, ``variant/<name>/<term>``, ``triplet/...``."""
    student, teacher, positives, negatives = golden_inputs(dtype)
    values: dict[str, float] = {}
    cfg = DistillConfig()
    for name in sorted(LOSSES):
        out = LOSSES[name].from_config(cfg)(student, teacher, positives, negatives)
        values.update({f"loss/{term}": float(v) for term, v in out.items()})
    for method in sorted(PRESETS):
        out = Distiller(DistillConfig(method=method))(student, teacher, positives, negatives)
        values.update({f"preset/{method}/{term}": float(v) for term, v in out.items()})
        values[f"preset/{method}/total"] = float(sum(out.values())) if out else 0.0
    for variant, (kwargs, method) in sorted(VARIANTS.items()):
        out = Distiller(DistillConfig(method=method, **kwargs))(student, teacher, positives, negatives)
        values.update({f"variant/{variant}/{term}": float(v) for term, v in out.items()})
    loss, stats = BatchHardTripletLoss(0.2)(student, positives, negatives)
    values["triplet/student/loss"] = float(loss)
    values["triplet/student/active_fraction"] = stats["active_fraction"]
    outputs = {"embedding": teacher, "cloud_embedding": teacher[:, :4], "image_embedding": teacher[:, 4:]}
    terms, _ = teacher_task_loss(outputs, (positives, negatives), (0.5, 0.5, 0.0))
    values.update({f"triplet/teacher/{k}": float(v) for k, v in terms.items()})
    return values


def write_golden(path: Path = GOLDEN_PATH) -> None:
    """Recompute and store the golden values (atomic write)."""
    from distilvpr_lib.data.files import atomic_write

    student, teacher, _, _ = golden_inputs()
    payload = {
        "description": "Golden loss values on seeded float64 inputs (B=8, D=12); see tests/test_distiller.py",
        "seed": GOLDEN_SEED,
        "input_checksum": {"student_sum": float(student.sum()), "teacher_sum": float(teacher.sum()),
                           "student_abs_sum": float(student.abs().sum())},
        "torch_version": torch.__version__,
        "values": compute_golden_values(),
    }
    with atomic_write(path, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------------------
# golden values
# ---------------------------------------------------------------------------
def test_golden_values():
    if os.environ.get(REGENERATE_ENV) == "1":
        write_golden()
        pytest.skip(f"regenerated {GOLDEN_PATH} ({REGENERATE_ENV}=1)")
    assert GOLDEN_PATH.is_file(), f"{GOLDEN_PATH} missing: run with {REGENERATE_ENV}=1 once"
    golden = json.loads(GOLDEN_PATH.read_text())
    student, teacher, _, _ = golden_inputs()
    checksum = golden["input_checksum"]
    assert float(student.sum()) == pytest.approx(checksum["student_sum"], rel=1e-12), "seeded inputs changed (torch RNG?)"
    assert float(teacher.sum()) == pytest.approx(checksum["teacher_sum"], rel=1e-12), "seeded inputs changed (torch RNG?)"
    expected = golden["values"]
    got = compute_golden_values()
    assert sorted(got) == sorted(expected), (
        f"loss terms differ from the golden file (new: {sorted(set(got) - set(expected))}, "
        f"gone: {sorted(set(expected) - set(got))}); if deliberate, regenerate with {REGENERATE_ENV}=1"
    )
    bad = {k: (got[k], expected[k]) for k in expected if not math.isclose(got[k], expected[k], rel_tol=1e-7, abs_tol=1e-10)}
    assert not bad, f"loss values changed (got, golden): {bad}; if deliberate, regenerate with {REGENERATE_ENV}=1"


def test_golden_values_hold_in_float32():
    if not GOLDEN_PATH.is_file():
        pytest.skip("no golden file yet")
    expected = json.loads(GOLDEN_PATH.read_text())["values"]
    got = compute_golden_values(torch.float32)
    bad = {k: (got[k], expected[k]) for k in expected if not math.isclose(got[k], expected[k], rel_tol=2e-3, abs_tol=2e-5)}
    assert not bad, f"float32 values far from the float64 golden values: {bad}"


def test_golden_file_covers_every_registered_term_and_preset():
    if not GOLDEN_PATH.is_file():
        pytest.skip("no golden file yet")
    values = json.loads(GOLDEN_PATH.read_text())["values"]
    for cls in LOSSES.values():
        for term in cls.term_names():
            assert f"loss/{term}" in values
    for method in PRESETS:
        assert f"preset/{method}/total" in values


# ---------------------------------------------------------------------------
# presets and weights
# ---------------------------------------------------------------------------
def test_nokd_is_empty():
    d = Distiller(DistillConfig(method="nokd"))
    s, t, p, n = golden_inputs()
    assert d(s, t, p, n) == {} and d.term_names == [] and len(d.losses) == 0


def test_distilvpr_oxford_and_boreas_weights():
    w = Distiller(DistillConfig(method="distilvpr")).weights
    assert w == {
        "rkdg_distance": 10.0, "rkdg_angle": 10.0, "rkdg_geodesic": 10.0,
        "cross_euclidean_st2ss": 0.1, "cross_spherical_st2ss": 0.1, "cross_hyperbolic_st2ss": 0.1,
    }
    wb = Distiller(DistillConfig(method="distilvpr_boreas")).weights
    assert wb["rkdg_angle"] == 1.0 and wb["cross_hyperbolic_st2ss"] == 0.1
    # the tt2st terms (weight 0 in the release) are not computed at all
    assert not any(t.endswith("tt2st") for t in Distiller(DistillConfig()).term_names)


def test_ablation_and_baseline_presets_exist_with_expected_terms():
    expected_terms = {
        "self_only": {"rkdg_distance", "rkdg_angle", "rkdg_geodesic"},
        "cross_only": {"cross_euclidean_st2ss", "cross_spherical_st2ss", "cross_hyperbolic_st2ss"},
        "self_E": {"rkdg_distance"}, "self_S": {"rkdg_angle"}, "self_H": {"rkdg_geodesic"},
        "cross_E": {"cross_euclidean_st2ss"}, "cross_S": {"cross_spherical_st2ss"}, "cross_H": {"cross_hyperbolic_st2ss"},
        "no_hyperbolic": {"rkdg_distance", "rkdg_angle", "cross_euclidean_st2ss", "cross_spherical_st2ss"},
        "tt2st": {"rkdg_distance", "rkdg_angle", "rkdg_geodesic",
                  "cross_euclidean_tt2st", "cross_spherical_tt2st", "cross_hyperbolic_tt2st"},
    }
    for method, terms in expected_terms.items():
        assert set(Distiller(DistillConfig(method=method)).weights) == terms, method
    assert Distiller(DistillConfig(method="self_E")).weights == {"rkdg_distance": 10.0}
    for baseline in ("kd", "rkd", "pkt", "sp", "cc", "csd", "afd", "epcnet", "lsdnet", "mkd"):
        weights = Distiller(DistillConfig(method=baseline)).weights
        assert weights and set(weights.values()) == {1.0}, baseline
        assert all(term.startswith(baseline) for term in weights)


def test_terms_override_preset_weights():
    w = Distiller(DistillConfig(method="distilvpr", terms={"rkdg": 1.0})).weights
    assert w == Distiller(DistillConfig(method="distilvpr_boreas")).weights
    w = Distiller(DistillConfig(terms={"cross_hyperbolic_st2ss": 0.0, "cross_euclidean_tt2st": 0.3})).weights
    assert "cross_hyperbolic_st2ss" not in w and w["cross_euclidean_tt2st"] == 0.3
    w = Distiller(DistillConfig(terms={"rkdg_angle": 0.5})).weights
    assert w["rkdg_angle"] == 5.0 and w["rkdg_distance"] == 10.0
    w = Distiller(DistillConfig(method="nokd", terms={"kd": 2.0, "mkd": 1.0, "mkd_class": 0.0})).weights
    assert w == {"kd": 2.0, "mkd_kd": 1.0, "mkd_batch": 1.0}


def test_internal_rkdg_weights_come_from_config_unless_preset_pins_them():
    w = Distiller(DistillConfig(rkdg_angle_weight=0.0, rkdg_geodesic_weight=2.0)).weights
    assert "rkdg_angle" not in w and w["rkdg_geodesic"] == 20.0
    # the self_E preset pins its internal weights
    assert Distiller(DistillConfig(method="self_E", rkdg_angle_weight=3.0)).weights == {"rkdg_distance": 10.0}


def test_unknown_names_raise_keyerror_listing_known_ones():
    with pytest.raises(KeyError, match="distilvpr_boreas"):
        Distiller(DistillConfig(method="distilvpr_kitti"))
    with pytest.raises(KeyError, match="cross_euclidean_st2ss"):
        Distiller(DistillConfig(terms={"cross_euclid_st2ss": 0.1}))
    with pytest.raises(KeyError, match="topoincare"):
        Distiller(DistillConfig(logit_mapping="tohyperbolic"))
    assert "rkdg" in known_weight_names() and "cross_euclidean" not in known_weight_names()


def test_logit_mapping_routes_euclidean_and_spherical_weights():
    w = Distiller(DistillConfig(logit_mapping="topoincare")).weights
    assert "cross_euclidean_st2ss" not in w and w["cross_euclidean_poincare_st2ss"] == 0.1
    assert "cross_spherical_st2ss" not in w and w["cross_spherical_poincare_st2ss"] == 0.1
    assert w["cross_hyperbolic_st2ss"] == 0.1  # the hyperbolic loss always uses one Poincaré mapping
    w = Distiller(DistillConfig(logit_mapping="id_topoin")).weights
    assert w["cross_euclidean_st2ss"] == w["cross_euclidean_poincare_st2ss"] == 0.1
    w = Distiller(DistillConfig(logit_mapping="id_topoin", terms={"cross_spherical_poincare_st2ss": 0.2})).weights
    assert w["cross_spherical_poincare_st2ss"] == 0.2


def test_forward_returns_weight_times_unweighted_loss():
    s, t, p, n = golden_inputs()
    cfg = DistillConfig()
    out = Distiller(cfg)(s, t, p, n)
    rkdg = LOSSES["rkdg"].from_config(cfg)(s, t)
    cross = LOSSES["cross_spherical"].from_config(cfg)(s, t)
    assert out["rkdg_angle"].item() == pytest.approx(10 * rkdg["rkdg_angle"].item(), rel=1e-12)
    assert out["cross_spherical_st2ss"].item() == pytest.approx(0.1 * cross["cross_spherical_st2ss"].item(), rel=1e-12)
    assert list(out) == Distiller(cfg).term_names


def test_resolve_term_weights_lists_every_term():
    weights = resolve_term_weights(DistillConfig())
    assert set(weights) == {t for cls in LOSSES.values() for t in cls.term_names()}


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(PRESETS))
def test_teacher_never_receives_gradient_and_student_gradients_are_finite(method):
    s0, t0, p, n = golden_inputs(torch.float32)
    s = s0.clone().requires_grad_(True)
    t = t0.clone().requires_grad_(True)
    out = Distiller(DistillConfig(method=method))(s, t, p, n)
    if not out:
        return
    sum(out.values()).backward()
    assert t.grad is None
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("artanh_backward", ["straight_through", "exact"])
def test_full_objective_finite_for_saturated_raw_embeddings(artanh_backward):
    # ‖f‖ = 20 at D = 384: the self-agent geodesic term sits at the artanh clamp (docs/METHOD.md §8.5)
    g = torch.Generator().manual_seed(3)
    s = torch.nn.functional.normalize(torch.randn(32, 384, generator=g), dim=1) * 20
    s.requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(32, 384, generator=g), dim=1) * 20
    out = Distiller(DistillConfig(artanh_backward=artanh_backward))(s, t)
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(s.grad).all()


def test_half_precision_inputs_are_promoted_and_autocast_is_disabled():
    s0, t0, p, n = golden_inputs(torch.float32)
    reference = Distiller(DistillConfig())(s0, t0, p, n)
    s = s0.to(torch.bfloat16).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = Distiller(DistillConfig())(s, t0, p, n)
    for term, value in out.items():
        assert value.dtype == torch.float32
        # only the bfloat16 rounding of the inputs separates the two
        assert value.item() == pytest.approx(reference[term].item(), rel=5e-2, abs=1e-3), term
    sum(out.values()).backward()
    assert torch.isfinite(s.grad.float()).all()


def test_mask_losses_need_masks():
    d = Distiller(DistillConfig(method="lsdnet"))
    assert d.requires_masks and not Distiller(DistillConfig()).requires_masks
    s, t, _, _ = golden_inputs()
    with pytest.raises(ValueError, match="positives_mask"):
        d(s, t)
    with pytest.raises(ValueError, match="shapes differ"):
        Distiller(DistillConfig())(s, t[:, :5])


def test_distill_config_round_trips_through_json():
    from distilvpr_lib.config import ExperimentConfig

    cfg = ExperimentConfig()
    cfg.distill.terms = {"rkdg": 1.0}
    cfg.distill.method = "self_only"
    back = ExperimentConfig.from_dict(json.loads(cfg.to_json()))
    assert dataclasses.asdict(back.distill) == dataclasses.asdict(cfg.distill)
    assert Distiller(back.distill).weights == Distiller(cfg.distill).weights


if __name__ == "__main__":  # pragma: no cover - deliberate regeneration
    if "--regenerate" in sys.argv:
        write_golden()
        print(f"wrote {GOLDEN_PATH}")
    else:
        print(__doc__)
