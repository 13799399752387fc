"""Distillation baselines (losses.baselines) against hand computations and their invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilvpr_lib.config import DistillConfig
from distilvpr_lib.losses.baselines import (
    AFDLoss,
    CCLoss,
    CSDLoss,
    EPCNetLoss,
    KDLoss,
    LSDNetLoss,
    MKDLoss,
    PKTLoss,
    RKDLoss,
    SPLoss,
)
from distilvpr_lib.losses.registry import LOSSES
from distilvpr_lib.losses.relational import RKDGLoss


def _rand(*shape, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


def _masks(batch=8):
    labels = torch.arange(batch) // 2
    positives = (labels[:, None] == labels[None, :]) & ~torch.eye(batch, dtype=torch.bool)
    negatives = (labels[:, None] - labels[None, :]).abs() >= 2
    return positives, negatives


def _softmax(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


S = _rand(6, 5, seed=1)
T = _rand(6, 5, seed=2)


def test_kd_by_hand():
    s, t = S.numpy(), T.numpy()
    for temperature in (1.0, 4.0):
        ps, pt = _softmax(s / temperature), _softmax(t / temperature)
        expected = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean() * temperature**2
        assert KDLoss(temperature)(S, T)["kd"].item() == pytest.approx(expected, rel=1e-10)
    assert KDLoss()(S, S.clone())["kd"].item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_equals_the_distance_and_angle_terms_of_rkdg():
    rkd = RKDLoss()(S, T)
    rkdg = RKDGLoss()(S, T)
    assert rkd["rkd_distance"].item() == pytest.approx(rkdg["rkdg_distance"].item(), rel=1e-12)
    assert rkd["rkd_angle"].item() == pytest.approx(rkdg["rkdg_angle"].item(), rel=1e-12)


def test_pkt_by_hand():
    eps = 1e-7

    def cond(x):
        u = x / (np.sqrt((x**2).sum(1, keepdims=True)) + eps)
        k = (u @ u.T + 1) / 2
        return k / k.sum(1, keepdims=True)

    ps, pt = cond(S.numpy()), cond(T.numpy())
    expected = (pt * np.log((pt + eps) / (ps + eps))).mean()
    assert PKTLoss()(S, T)["pkt"].item() == pytest.approx(expected, rel=1e-10)
    assert PKTLoss()(S, S.clone())["pkt"].item() == pytest.approx(0.0, abs=1e-12)


def test_sp_by_hand_and_scale_invariance():
    def gram(x):
        g = x @ x.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    expected = ((gram(T.numpy()) - gram(S.numpy())) ** 2).sum() / 36
    assert SPLoss()(S, T)["sp"].item() == pytest.approx(expected, rel=1e-10)
    assert SPLoss()(3.0 * S, 0.5 * T)["sp"].item() == pytest.approx(expected, rel=1e-10)
    assert SPLoss()(S, S.clone())["sp"].item() == pytest.approx(0.0, abs=1e-14)


def test_cc_taylor_kernel_approaches_the_gaussian_rbf():
    gamma = 0.4

    def rbf(x):
        u = F.normalize(x, dim=1)
        return torch.exp(-gamma * torch.cdist(u, u) ** 2)

    exact = ((rbf(T) - rbf(S)) ** 2).sum() / 36
    # order 2 (default) is an approximation; a high order converges to the exact kernel
    assert CCLoss(gamma, order=25)(S, T)["cc"].item() == pytest.approx(exact.item(), rel=1e-8)
    approx = CCLoss(gamma, order=2)(S, T)["cc"].item()
    assert approx != pytest.approx(exact.item(), rel=1e-6)
    # order-2 by hand
    def corr2(x):
        u = F.normalize(x, dim=1)
        d = u @ u.T
        return math.exp(-2 * gamma) * (1 + 2 * gamma * d + (2 * gamma * d) ** 2 / 2)

    assert approx == pytest.approx((((corr2(T) - corr2(S)) ** 2).sum() / 36).item(), rel=1e-10)
    assert CCLoss()(S, S.clone())["cc"].item() == pytest.approx(0.0, abs=1e-14)


def test_csd_by_hand():
    sh, th = F.normalize(S, dim=1), F.normalize(T, dim=1)
    assert CSDLoss()(S, T)["csd"].item() == pytest.approx(F.mse_loss(th @ sh.T, th @ th.T).item(), rel=1e-10)
    assert CSDLoss()(S, S.clone())["csd"].item() == pytest.approx(0.0, abs=1e-14)
    kd = CSDLoss(use_kd=True)(S, T)["csd"]
    assert kd.item() == pytest.approx(KDLoss()(th @ sh.T, th @ th.T)["kd"].item(), rel=1e-10)


def test_afd_consistent_and_faithful_indexing_by_hand():
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [3.0, 0.0], [-1.0, 0.5]], dtype=torch.float64)
    att = torch.softmax(s @ t.T, dim=1)  # attention of student i on teacher j
    sh, th = F.normalize(s, dim=1), F.normalize(t, dim=1)
    m = torch.tensor([[(sh[i] - th[j]).norm() for j in range(3)] for i in range(3)], dtype=torch.float64)
    consistent = (att * m).sum(1).mean()
    faithful = (att * m.T).sum(1).mean()
    assert abs(consistent.item() - faithful.item()) > 1e-3
    assert AFDLoss()(s, t)["afd"].item() == pytest.approx(consistent.item(), rel=1e-10)
    assert AFDLoss(faithful_index_mismatch=True)(s, t)["afd"].item() == pytest.approx(faithful.item(), rel=1e-10)


def test_epcnet_variants():
    sh, th = F.normalize(S, dim=1), F.normalize(T, dim=1)
    assert EPCNetLoss()(S, T)["epcnet"].item() == pytest.approx(((sh - th) ** 2).mean().item(), rel=1e-10)
    assert EPCNetLoss("l1")(S, T)["epcnet"].item() == pytest.approx((sh - th).abs().mean().item(), rel=1e-10)
    kl = EPCNetLoss("kldiv", "log_softmax")(S, T)["epcnet"]
    assert kl.item() == pytest.approx(KDLoss()(S, T)["kd"].item(), rel=1e-10)
    assert EPCNetLoss()(S, S.clone())["epcnet"].item() == 0.0
    with pytest.raises(KeyError, match="mse"):
        EPCNetLoss("huber")


def test_lsdnet_by_hand():
    s, t = _rand(8, 4, seed=3), _rand(8, 4, seed=4)
    positives, negatives = _masks(8)
    out = LSDNetLoss()(s, t, positives, negatives)
    sh, th = F.normalize(s, dim=1), F.normalize(t, dim=1)
    ss, tt = torch.cdist(sh, sh), torch.cdist(th, th)
    assert out["lsdnet_positive"].item() == pytest.approx(F.mse_loss(ss[positives], tt[positives]).item(), rel=1e-9)
    assert out["lsdnet_negative"].item() == pytest.approx(F.mse_loss(ss[negatives], tt[negatives]).item(), rel=1e-9)
    pairs_p = [(i, j) for i in range(8) for j in range(8) if positives[i, j]]
    pairs_n = [(i, j) for i in range(8) for j in range(8) if negatives[i, j]]

    def diff_products(x):
        dp = torch.stack([x[j] - x[i] for i, j in pairs_p])
        dn = torch.stack([x[j] - x[i] for i, j in pairs_n])
        return dp @ dn.T

    expected = F.mse_loss(diff_products(sh), diff_products(th))
    assert out["lsdnet_difference"].item() == pytest.approx(expected.item(), rel=1e-9)
    zero = LSDNetLoss()(s, s.clone(), positives, negatives)
    assert all(v.item() == pytest.approx(0.0, abs=1e-12) for v in zero.values())
    with pytest.raises(ValueError, match="positives_mask"):
        LSDNetLoss()(s, t)
    # no positive pair: the pair terms are 0, not NaN
    empty = LSDNetLoss()(s, t, torch.zeros(8, 8, dtype=torch.bool), negatives)
    assert empty["lsdnet_positive"].item() == 0.0 and empty["lsdnet_difference"].item() == 0.0


def test_mkd_by_hand():
    ps, pt = _softmax(S.numpy()), _softmax(T.numpy())
    out = MKDLoss()(S, T)
    assert out["mkd_kd"].item() == pytest.approx(KDLoss()(S, T)["kd"].item(), rel=1e-12)
    assert out["mkd_class"].item() == pytest.approx((((pt.T @ pt) - (ps.T @ ps)) ** 2).sum() / 5, rel=1e-10)
    assert out["mkd_batch"].item() == pytest.approx((((pt @ pt.T) - (ps @ ps.T)) ** 2).sum() / 6, rel=1e-10)


#: AFD's attention is not one-hot, so Σ_j att_ij ‖ŝ_i − ŝ_j‖ > 0 even for s = t.
NOT_ZERO_AT_IDENTITY = {"afd"}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_registered_loss_zero_at_identity_where_expected_and_finite_gradients(name):
    cls = LOSSES[name]
    loss = cls.from_config(DistillConfig())
    positives, negatives = _masks(8)
    # ‖f‖ = 20 raw embeddings (the saturation regime of docs/METHOD.md §8.5) and ordinary ones
    for scale in (1.0, 20.0 / math.sqrt(12)):
        s = _rand(8, 12, scale=scale, seed=5, dtype=torch.float32).requires_grad_(True)
        t = _rand(8, 12, scale=scale, seed=6, dtype=torch.float32).requires_grad_(True)
        out = loss(s, t, positives, negatives)
        assert set(out) == set(cls.term_names())
        for term, value in out.items():
            assert value.shape == () and torch.isfinite(value), term
        sum(out.values()).backward()
        assert torch.isfinite(s.grad).all()
        assert t.grad is None, f"{name}: the teacher received a gradient"
        same = loss(s.detach(), s.detach().clone(), positives, negatives)
        for term, value in same.items():
            if term in NOT_ZERO_AT_IDENTITY:
                assert value.item() > 0
            else:
                assert abs(value.item()) < 1e-5, f"{term} is not 0 when student == teacher"


def test_registry_docstrings_cite_formulas():
    for name, cls in LOSSES.items():
        assert cls.__doc__ and len(cls.__doc__) > 80, name
        assert cls.name == name


def test_dimension_free_is_what_each_loss_accepts():
    """``DistillLoss.dimension_free`` (what Distiller.dimension_free reads) matches what each loss's forward
    accepts: a (B, 8) student against a (B, 12) teacher runs exactly for the dimension-free losses."""
    from distilvpr_lib.config import DistillConfig
    from distilvpr_lib.losses.registry import LOSSES

    torch.manual_seed(0)
    student, teacher = torch.randn(6, 8), torch.randn(6, 12)
    positives = torch.zeros(6, 6, dtype=torch.bool)
    positives[0, 1] = positives[1, 0] = True
    negatives = ~positives & ~torch.eye(6, dtype=torch.bool)
    free = set()
    for name, cls in LOSSES.items():
        loss = cls.from_config(DistillConfig())
        try:
            loss(student, teacher, positives, negatives)
        except ValueError:
            continue
        free.add(name)
    assert free == {name for name, cls in LOSSES.items() if cls.dimension_free}
    assert free == {"rkdg", "rkdg2", "rkd", "pkt", "sp"}
