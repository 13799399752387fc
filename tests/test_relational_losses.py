"""Self-agent RKD-G and cross-agent losses (docs/METHOD.md §4.3–§4.4) against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from distilvpr_lib.losses import hyperbolic as hyp
from distilvpr_lib.losses import relations
from distilvpr_lib.losses.relational import (
    CrossEuclideanLoss,
    CrossEuclideanPoincareLoss,
    CrossHyperbolicLoss,
    CrossSphericalLoss,
    RKDGLoss,
    geodesic_loss,
    mean_positive_normalize,
    rkd_angle_loss,
    rkd_angle_tensor,
    rkd_distance_loss,
    rkd_distance_matrix,
)

C = 0.1


def _rand(*shape, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# ---------------------------------------------------------------------------
# relation functions, by hand
# ---------------------------------------------------------------------------
TRIANGLE = torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)


def test_distance_matrix_and_mean_normalisation_by_hand():
    psi = rkd_distance_matrix(TRIANGLE)
    expected = torch.tensor([[0, 3, 4], [3, 0, 5], [4, 5, 0]], dtype=torch.float64)
    torch.testing.assert_close(psi, expected)
    # mean of the positive entries = (3+4+5)·2/6 = 4
    torch.testing.assert_close(mean_positive_normalize(psi), expected / 4)
    # the diagonal is exactly 0 even for coincident points; off-diagonal floor √1e-12
    dup = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    assert rkd_distance_matrix(dup).tolist() == [[0.0, 1e-6], [1e-6, 0.0]]


def test_angle_tensor_by_hand():
    a = rkd_angle_tensor(TRIANGLE)
    assert a.shape == (3, 3, 3)
    # at vertex 0 the edges to 1 and 2 are orthogonal
    assert a[0, 1, 2].item() == pytest.approx(0.0, abs=1e-12)
    # at vertex 1: edges (-3, 0) and (-3, 4): cos = 9/(3·5)
    assert a[1, 0, 2].item() == pytest.approx(0.6)
    # at vertex 2: edges (0,-4) and (3,-4): cos = 16/(4·5)
    assert a[2, 0, 1].item() == pytest.approx(0.8)
    # A_ijj = 1 for j ≠ i; degenerate triples (j = i or k = i) are 0
    assert a[0, 1, 1].item() == pytest.approx(1.0)
    for i in range(3):
        assert torch.all(a[i, i, :] == 0) and torch.all(a[i, :, i] == 0)


@pytest.mark.parametrize("scale", [0.1, 1.0, 20.0])
def test_angle_gram_equals_broadcast(scale):
    x = _rand(9, 7, scale=scale, seed=1) + 5.0  # common offset: the centring keeps precision
    torch.testing.assert_close(rkd_angle_tensor(x, "gram"), rkd_angle_tensor(x, "broadcast"), rtol=1e-9, atol=1e-10)
    x32 = x.float().requires_grad_(True)
    g1 = torch.autograd.grad(rkd_angle_tensor(x32, "gram").pow(2).sum(), x32)[0]
    g2 = torch.autograd.grad(rkd_angle_tensor(x32, "broadcast").pow(2).sum(), x32)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-4)


def test_relation_shapes():
    x = _rand(6, 4)
    assert rkd_distance_matrix(x).shape == (6, 6)
    assert rkd_angle_tensor(x).shape == (6, 6, 6)
    for geometry in relations.GEOMETRIES:
        assert relations.relation_matrix(x, None, geometry).shape == (6, 6)
        assert relations.relation_matrix(x, _rand(5, 4), geometry).shape == (6, 5)
    with pytest.raises(KeyError, match="euclidean"):
        relations.relation_matrix(x, None, "elliptic")


# ---------------------------------------------------------------------------
# RKD-G
# ---------------------------------------------------------------------------
def test_rkdg_is_zero_when_student_equals_teacher():
    s = _rand(8, 12, scale=3.0, seed=2)
    out = RKDGLoss(C)(s, s.clone())
    assert set(out) == {"rkdg_distance", "rkdg_angle", "rkdg_geodesic"}
    for value in out.values():
        assert value.item() == pytest.approx(0.0, abs=1e-12)


def test_rkdg_terms_by_hand_formula():
    s, t = _rand(5, 3, seed=3), _rand(5, 3, seed=4)
    # L_D: SmoothL1 of mean-normalised distance matrices, diagonal included in the mean over B²
    def norm_dist(x):
        d = torch.cdist(x, x)
        return d / d[~torch.eye(5, dtype=torch.bool)].mean()

    expected_d = F.smooth_l1_loss(norm_dist(s), norm_dist(t))
    assert rkd_distance_loss(s, t).item() == pytest.approx(expected_d.item(), rel=1e-10)

    # L_A via an explicit triple loop
    def angles(x):
        out = torch.zeros(5, 5, 5, dtype=x.dtype)
        for i in range(5):
            for j in range(5):
                for k in range(5):
                    if j != i and k != i:
                        u, v = x[j] - x[i], x[k] - x[i]
                        out[i, j, k] = u @ v / (u.norm() * v.norm())
        return out

    expected_a = F.smooth_l1_loss(angles(s), angles(t))
    assert rkd_angle_loss(s, t).item() == pytest.approx(expected_a.item(), rel=1e-10)

    # L_G via the loop distance on ToPoincare(raw)
    def norm_geo(x):
        u = hyp.to_poincare(x, C)
        g = torch.stack([torch.stack([hyp.dist(u[i], u[j], C) if i != j else u.new_zeros(()) for j in range(5)])
                         for i in range(5)])
        return g / g[~torch.eye(5, dtype=torch.bool)].mean()

    expected_g = F.smooth_l1_loss(norm_geo(s), norm_geo(t))
    assert geodesic_loss(s, t, C).item() == pytest.approx(expected_g.item(), rel=1e-8)


def test_distance_and_angle_terms_are_scale_invariant_but_geodesic_is_not():
    s, t = _rand(8, 12, seed=5), _rand(8, 12, seed=6)
    base_d, base_a, base_g = rkd_distance_loss(s, t), rkd_angle_loss(s, t), geodesic_loss(s, t, C)
    for a, b in [(1.0, 7.0), (0.3, 1.0), (5.0, 0.2)]:
        assert rkd_distance_loss(a * s, b * t).item() == pytest.approx(base_d.item(), rel=1e-9)
        assert rkd_angle_loss(a * s, b * t).item() == pytest.approx(base_a.item(), rel=1e-9)
    assert abs(geodesic_loss(s, 7.0 * t, C).item() - base_g.item()) > 1e-3
    assert abs(geodesic_loss(7.0 * s, t, C).item() - base_g.item()) > 1e-3


def test_student_normaliser_keeps_its_gradient():
    # if the student's mean were detached, the gradient of L_D w.r.t. a global rescaling would not vanish
    s, t = _rand(6, 4, seed=7), _rand(6, 4, seed=8)
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    rkd_distance_loss(scale * s, t).backward()
    assert abs(scale.grad.item()) < 1e-10
    # sanity: with a detached normaliser the same derivative is clearly non-zero
    scale2 = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    psi = rkd_distance_matrix(scale2 * s)
    detached = psi / psi[psi > 0].mean().detach()
    target = mean_positive_normalize(rkd_distance_matrix(t))
    F.smooth_l1_loss(detached, target).backward()
    assert abs(scale2.grad.item()) > 1e-3


def test_teacher_receives_no_gradient_and_student_does():
    s = _rand(8, 12, scale=2.0, seed=9).requires_grad_(True)
    t = _rand(8, 12, scale=2.0, seed=10).requires_grad_(True)
    total = sum(RKDGLoss(C)(s, t).values())
    total.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("backward", hyp.ARTANH_BACKWARDS)
def test_rkdg_gradients_finite_for_large_raw_norms(backward):
    # ‖f‖ = 20: all points near the ball boundary, geodesics near the artanh clamp ceiling
    raw = F.normalize(_rand(16, 384, seed=11, dtype=torch.float32), dim=1) * 20
    s = (raw + 0.01 * _rand(16, 384, seed=12, dtype=torch.float32)).requires_grad_(True)
    t = F.normalize(_rand(16, 384, seed=13, dtype=torch.float32), dim=1) * 20
    out = RKDGLoss(C, artanh_backward=backward)(s, t)
    total = sum(out.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(s.grad).all()


def test_rkdg_terms_subset_and_unknown_term():
    s, t = _rand(4, 3, seed=14), _rand(4, 3, seed=15)
    assert set(RKDGLoss(C)(s, t, terms=["rkdg_angle"])) == {"rkdg_angle"}
    with pytest.raises(KeyError, match="rkdg_distance"):
        RKDGLoss(C)(s, t, terms=["rkdg_bogus"])
    # RKD-G compares each agent's own (B, B) relations: another teacher dimension is fine, another batch is not
    assert set(RKDGLoss(C)(s, _rand(4, 5))) == {"rkdg_distance", "rkdg_angle", "rkdg_geodesic"}
    with pytest.raises(ValueError, match="shapes differ"):
        RKDGLoss(C)(s, _rand(5, 3))


# ---------------------------------------------------------------------------
# cross-agent losses
# ---------------------------------------------------------------------------
CROSS = [CrossEuclideanLoss, CrossSphericalLoss, CrossHyperbolicLoss, CrossEuclideanPoincareLoss]


def test_cross_euclidean_by_hand():
    # already unit vectors, so l2 normalisation is the identity
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    out = CrossEuclideanLoss(C)(s, t)
    r2 = math.sqrt(2)
    ss = torch.tensor([[0, r2], [r2, 0]])
    st = torch.tensor([[r2, 2.0], [0.0, r2]])  # ‖s_i − t_j‖
    tt = torch.tensor([[0, r2], [r2, 0]])
    assert out["cross_euclidean_st2ss"].item() == pytest.approx(((ss - st) ** 2).mean().item())
    assert out["cross_euclidean_tt2st"].item() == pytest.approx(((st - tt) ** 2).mean().item())
    l1 = CrossEuclideanLoss(C, loss_type="l1")(s, t)
    assert l1["cross_euclidean_st2ss"].item() == pytest.approx((ss - st).abs().mean().item())


def test_cross_spherical_and_hyperbolic_by_hand():
    s = _rand(4, 3, seed=16)
    t = _rand(4, 3, seed=17)
    sh, th = F.normalize(s, dim=1), F.normalize(t, dim=1)
    out = CrossSphericalLoss(C)(s, t)
    assert out["cross_spherical_st2ss"].item() == pytest.approx(F.mse_loss(sh @ sh.T, sh @ th.T).item())
    assert out["cross_spherical_tt2st"].item() == pytest.approx(F.mse_loss(sh @ th.T, th @ th.T).item())
    # divide=False: raw dot products of the (normalised) inputs: same values here; with identity norm they differ
    raw = CrossSphericalLoss(C, norm_fn="identity", divide=False)(s, t)
    assert raw["cross_spherical_st2ss"].item() == pytest.approx(F.mse_loss(s @ s.T, s @ t.T).item())
    u, v = hyp.to_poincare(sh, C), hyp.to_poincare(th, C)
    loop = lambda a, b: torch.stack([torch.stack([hyp.dist(a[i], b[j], C) for j in range(4)]) for i in range(4)])
    ss, st, tt = loop(u, u) * (1 - torch.eye(4, dtype=torch.float64)), loop(u, v), loop(v, v) * (1 - torch.eye(4, dtype=torch.float64))
    out = CrossHyperbolicLoss(C)(s, t)
    assert out["cross_hyperbolic_st2ss"].item() == pytest.approx(F.mse_loss(ss, st).item(), rel=1e-6)
    assert out["cross_hyperbolic_tt2st"].item() == pytest.approx(F.mse_loss(st, tt).item(), rel=1e-6)
    # the Poincaré logit mapping = the Euclidean loss on ToPoincare(ŝ), ToPoincare(t̂)
    mapped = CrossEuclideanPoincareLoss(C)(s, t)["cross_euclidean_poincare_st2ss"]
    assert mapped.item() == pytest.approx(F.mse_loss(torch.cdist(u, u), torch.cdist(u, v)).item(), rel=1e-8)


@pytest.mark.parametrize("cls", CROSS)
def test_student_equal_teacher_gives_equal_zero_losses_with_zero_gradient(cls):
    s = _rand(6, 5, seed=18).requires_grad_(True)
    out = cls(C)(s, s.detach().clone())
    assert out[f"{cls.name}_st2ss"].item() == pytest.approx(out[f"{cls.name}_tt2st"].item(), abs=1e-12)
    assert out[f"{cls.name}_st2ss"].item() == pytest.approx(0.0, abs=1e-12)
    sum(out.values()).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().max() < 1e-6


@pytest.mark.parametrize("cls", CROSS)
def test_st2ss_gradient_flows_only_through_ss(cls):
    s0, t = _rand(5, 4, seed=19), _rand(5, 4, seed=20)
    loss = cls(C)
    s = s0.clone().requires_grad_(True)
    loss(s, t, terms=[f"{cls.name}_st2ss"])[f"{cls.name}_st2ss"].backward()

    def relation_inputs(x):
        return loss.relation_inputs(x, t)

    s_in0, t_in = relation_inputs(s0)
    st_fixed = relations.relation_matrix(s_in0, t_in, cls.geometry, curvature=C)

    def ss_only(x):  # the ST target frozen at s0: gradient must equal this one's
        xi, _ = relation_inputs(x)
        return F.mse_loss(relations.relation_matrix(xi, None, cls.geometry, curvature=C), st_fixed)

    def both_paths(x):
        xi, ti = relation_inputs(x)
        return F.mse_loss(relations.relation_matrix(xi, None, cls.geometry, curvature=C),
                          relations.relation_matrix(xi, ti, cls.geometry, curvature=C))

    x = s0.clone().requires_grad_(True)
    grad_ss = torch.autograd.grad(ss_only(x), x)[0]
    x2 = s0.clone().requires_grad_(True)
    grad_both = torch.autograd.grad(both_paths(x2), x2)[0]
    torch.testing.assert_close(s.grad, grad_ss, rtol=1e-8, atol=1e-10)
    assert (s.grad - grad_both).abs().max() > 1e-6  # the ST path would have contributed
    # and the autograd gradient is the true derivative of the SS-only function
    assert torch.autograd.gradcheck(ss_only, (s0.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", CROSS)
def test_tt2st_gradient_flows_through_student_half_of_st(cls):
    s0, t = _rand(5, 4, seed=21), _rand(5, 4, seed=22)
    loss = cls(C)
    term = f"{cls.name}_tt2st"
    assert torch.autograd.gradcheck(lambda x: loss(x, t, terms=[term])[term], (s0.clone().requires_grad_(True),),
                                    eps=1e-6, atol=1e-6)
    tl = t.clone().requires_grad_(True)
    loss(s0.clone().requires_grad_(True), tl)[term].backward()
    assert tl.grad is None


@pytest.mark.parametrize("geometry", relations.GEOMETRIES)
def test_st_orientation_does_not_change_the_losses(geometry):
    s, t = F.normalize(_rand(6, 4, seed=23), dim=1), F.normalize(_rand(6, 4, seed=24), dim=1)
    ss = relations.relation_matrix(s, None, geometry, curvature=C)
    tt = relations.relation_matrix(t, None, geometry, curvature=C)
    st = relations.relation_matrix(s, t, geometry, curvature=C)
    ts = relations.relation_matrix(t, s, geometry, curvature=C)
    torch.testing.assert_close(ts, st.T, rtol=1e-9, atol=1e-9)
    assert F.mse_loss(ss, st).item() == pytest.approx(F.mse_loss(ss, ts).item(), rel=1e-10)
    assert F.mse_loss(st, tt).item() == pytest.approx(F.mse_loss(ts, tt).item(), rel=1e-10)


def test_norm_fns():
    s, t = _rand(3, 4, seed=25), _rand(3, 4, seed=26)
    a, b = relations.normalize_pair(s, t, "log_softmax")
    torch.testing.assert_close(a, F.log_softmax(s, dim=1))
    torch.testing.assert_close(b, F.softmax(t, dim=1))
    a, b = relations.normalize_pair(s, t, "softmax")
    torch.testing.assert_close(a, F.softmax(s, dim=1))
    a, _ = relations.normalize_pair(s, t, "identity")
    assert a is s
    a, _ = relations.normalize_pair(torch.zeros(2, 3), t[:2], "l2")
    assert torch.equal(a, torch.zeros(2, 3))
    with pytest.raises(KeyError, match="log_softmax"):
        relations.normalize_pair(s, t, "zscore")
    for norm_fn in relations.NORM_FNS:
        out = CrossHyperbolicLoss(C, norm_fn=norm_fn)(s, t)
        assert all(torch.isfinite(v) for v in out.values())


def test_mapping_branches():
    assert relations.mapping_branches("identity") == ("identity",)
    assert relations.mapping_branches("topoincare") == ("poincare",)
    assert relations.mapping_branches("id_topoin") == ("identity", "poincare")
    with pytest.raises(KeyError, match="id_topoin"):
        relations.mapping_branches("tohyper")


@pytest.mark.parametrize("chunk_size", [1, 4, 16, 64])
def test_chunked_angle_loss_equals_reference_construction(chunk_size):
    s = (_rand(9, 6, scale=3.0, seed=27) + 4.0).requires_grad_(True)
    t = _rand(9, 6, scale=2.0, seed=28)
    ref = s.detach().clone().requires_grad_(True)
    fast = rkd_angle_loss(s, t, "gram", chunk_size=chunk_size)
    slow = rkd_angle_loss(ref, t, "broadcast")
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10)
    fast.backward()
    slow.backward()
    torch.testing.assert_close(s.grad, ref.grad, rtol=1e-8, atol=1e-12)
    with pytest.raises(KeyError, match="broadcast"):
        rkd_angle_loss(s, t, "loops")


def test_angle_with_duplicate_samples_matches_broadcast_and_stays_bounded() -> None:
    """A sub-map repeated in a batch (the sampler allows it) must not blow the Gram angle up."""
    import torch

    from distilvpr_lib.losses.relational import rkd_angle_loss, rkd_angle_tensor

    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 384, generator=g) * 8.0
    x[7] = x[3]  # exact duplicate
    x[9] = x[3]
    gram = rkd_angle_tensor(x, "gram")
    assert gram.abs().max() <= 1.0 + 1e-6
    torch.testing.assert_close(gram, rkd_angle_tensor(x, "broadcast"), atol=1e-6, rtol=0)
    teacher = torch.randn(10, 384, generator=g)
    teacher[7] = teacher[3]
    assert rkd_angle_loss(x, teacher, "gram") == pytest.approx(float(rkd_angle_loss(x, teacher, "broadcast")), abs=1e-6)
