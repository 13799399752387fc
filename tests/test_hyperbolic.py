"""Poincaré-ball maths (losses.hyperbolic) against hand formulas, spec magnitudes and geoopt."""

from __future__ import annotations

import math

import pytest
import torch

from distilvpr_lib.losses import hyperbolic as hyp

C = 0.1


def _rand(*shape, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype) * scale


# ---------------------------------------------------------------------------
# expmap0 / projection
# ---------------------------------------------------------------------------
def test_expmap0_of_zero_is_zero_with_finite_zero_gradient():
    u = torch.zeros(3, 5, requires_grad=True)
    y = hyp.expmap0(u, C)
    assert torch.equal(y, torch.zeros(3, 5))
    y.sum().backward()
    assert torch.isfinite(u.grad).all()
    assert torch.equal(u.grad, torch.full((3, 5), 1.0))  # d/du tanh(√c r)u/(√c r) -> 1 at r -> 0


def test_expmap0_matches_closed_form_and_keeps_direction():
    u = _rand(6, 4, scale=3.0)
    norm = u.norm(dim=1, keepdim=True)
    expected = torch.tanh(math.sqrt(C) * norm) * u / (math.sqrt(C) * norm)
    torch.testing.assert_close(hyp.expmap0(u, C), expected, rtol=1e-12, atol=1e-12)


def test_expmap0_tanh_argument_is_clamped():
    u = torch.tensor([[1e4, 0.0]], dtype=torch.float64, requires_grad=True)  # √c·‖u‖ = 3162 > 15
    y = hyp.expmap0(u, C)
    assert y[0, 0].item() == pytest.approx(math.tanh(15.0) / math.sqrt(C), rel=1e-12)
    y[0, 0].backward()  # clamped tanh: only the 1/‖u‖ factor is differentiated (d/du0 of tanh(15)·u0/(√c u0) = 0)
    assert abs(u.grad[0, 0].item()) < 1e-12


@pytest.mark.parametrize("c", [0.01, 0.1, 1.0])
def test_projected_norm_never_exceeds_max_radius(c):
    u = torch.cat([_rand(50, 8, scale=s, seed=i) for i, s in enumerate([0.1, 1, 5, 20, 1e3])])
    for dtype in (torch.float32, torch.float64):
        x = hyp.to_poincare(u.to(dtype), c)
        assert (x.norm(dim=1) <= hyp.max_radius(c) * (1 + 1e-6)).all()
    assert hyp.max_radius(0.1) == pytest.approx(3.15912, abs=1e-5)


def test_radii_of_raw_norms_match_spec():
    # docs/METHOD.md §4.2: ‖u‖ = 1, 5, 10, 20 map to radii 0.968, 2.91, 3.15, 3.159
    for raw, radius, tol in [(1, 0.968, 1e-3), (5, 2.91, 1e-2), (10, 3.15, 1e-2), (20, 3.159, 1e-3)]:
        u = torch.zeros(1, 3, dtype=torch.float64)
        u[0, 0] = raw
        assert hyp.to_poincare(u, C).norm().item() == pytest.approx(radius, abs=tol)


# ---------------------------------------------------------------------------
# distances
# ---------------------------------------------------------------------------
def test_distance_of_point_to_itself_is_zero():
    x = hyp.to_poincare(_rand(10, 6, scale=3.0), C)
    assert hyp.dist(x, x, C).abs().max() < 1e-6
    for method in hyp.PAIRWISE_METHODS:
        d = hyp.pairwise_dist(x, x, C, method=method)
        # pairwise methods that expand ||x - y||^2 lose sqrt(eps)-scale precision near the boundary (these
        # points are ~35 apart): tolerance relative to the distance scale (measured 6.5e-6 on one BLAS build)
        assert torch.diagonal(d).abs().max() < 1e-6 * max(1.0, float(d.max()))


def test_distance_is_symmetric():
    x = hyp.to_poincare(_rand(7, 5, scale=2.0, seed=1), C)
    y = hyp.to_poincare(_rand(7, 5, scale=2.0, seed=2), C)
    torch.testing.assert_close(hyp.dist(x, y, C), hyp.dist(y, x, C), rtol=1e-10, atol=1e-10)
    d = hyp.pairwise_dist(x, x, C)
    torch.testing.assert_close(d, d.T, rtol=1e-10, atol=1e-10)


def test_small_curvature_limit_is_twice_euclidean():
    x, y = _rand(5, 4, seed=3), _rand(5, 4, seed=4)
    c = 1e-8
    torch.testing.assert_close(hyp.dist(x, y, c), 2 * (x - y).norm(dim=1), rtol=1e-4, atol=1e-6)


def test_distance_from_origin_is_closed_form():
    y = hyp.to_poincare(_rand(9, 5, scale=2.0, seed=5), C)
    expected = 2 / math.sqrt(C) * torch.atanh(math.sqrt(C) * y.norm(dim=1))
    # the reference's +1e-5 in the Möbius denominator scales ‖(-0) ⊕ y‖ by 1/(1 + 1e-5)
    torch.testing.assert_close(hyp.dist(torch.zeros_like(y), y, C), expected, rtol=2e-4, atol=1e-6)
    exact = 2 / math.sqrt(C) * torch.atanh(math.sqrt(C) * y.norm(dim=1) / (1 + 1e-5))
    torch.testing.assert_close(hyp.dist(torch.zeros_like(y), y, C), exact, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", hyp.PAIRWISE_METHODS)
def test_pairwise_matrix_matches_loop(method):
    x = hyp.to_poincare(_rand(6, 5, scale=4.0, seed=6), C)
    y = hyp.to_poincare(_rand(4, 5, scale=1.0, seed=7), C)
    m = hyp.pairwise_dist(x, y, C, method=method)
    assert m.shape == (6, 4)
    loop = torch.stack([torch.stack([hyp.dist(x[i], y[j], C) for j in range(4)]) for i in range(6)])
    torch.testing.assert_close(m, loop, rtol=1e-9, atol=1e-9)


def test_gram_method_is_more_accurate_than_float32_broadcast_near_boundary():
    u = _rand(16, 12, scale=4.0, seed=8)  # ‖u‖ ≈ 14: points near the boundary, distances near the ceiling
    truth = hyp.pairwise_dist(hyp.to_poincare(u, C), hyp.to_poincare(u, C), C, method="broadcast")  # float64
    x = hyp.to_poincare(u.float(), C)
    gram = hyp.pairwise_dist(x, x, C, method="gram")
    broadcast = hyp.pairwise_dist(x, x, C, method="broadcast")  # the reference's float32 computation
    assert gram.dtype == torch.float32
    err_gram = (gram.double() - truth).abs().max().item()
    err_broadcast = (broadcast.double() - truth).abs().max().item()
    assert err_gram < 2e-3  # limited by the float32 inputs only
    assert err_broadcast < 0.1
    assert err_gram < err_broadcast


def test_unit_vector_distances_match_spec():
    # docs/METHOD.md §4.2: unit vectors at θ = π/2 -> 2.916, θ = π -> 4.000 at c = 0.1 (θ = 0.5 -> 1.05)
    def pair(theta):
        a = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        b = torch.tensor([[math.cos(theta), math.sin(theta)]], dtype=torch.float64)
        return hyp.dist(hyp.to_poincare(a, C), hyp.to_poincare(b, C), C).item()

    assert pair(math.pi / 2) == pytest.approx(2.916, abs=1e-3)
    assert pair(math.pi) == pytest.approx(4.000, abs=1e-3)
    assert pair(0.5) == pytest.approx(1.05, abs=1e-2)


def test_large_raw_norms_reach_spec_values_and_clamp_ceiling():
    # orthogonal raw inputs with ‖u‖ = 5, 10, 20 -> 17.8, 36.8, 38.6 (ceiling (2/√c)·artanh(1 − 1e-5))
    for raw, expected in [(5, 17.8), (10, 36.8), (20, 38.6)]:
        u = torch.tensor([[raw, 0.0], [0.0, raw]], dtype=torch.float64)
        d = hyp.pairwise_dist(hyp.to_poincare(u, C), hyp.to_poincare(u, C), C)
        assert d[0, 1].item() == pytest.approx(expected, abs=0.06)
    ceiling = 2 / math.sqrt(C) * math.atanh(1 - 1e-5)
    assert ceiling == pytest.approx(38.6, abs=0.05)


# ---------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------
def test_straight_through_artanh_gradient_is_evaluated_at_clamped_input():
    x = torch.tensor([0.5, 1.0, 2.0, -3.0], dtype=torch.float64, requires_grad=True)
    hyp.artanh(x, "straight_through").sum().backward()
    z = torch.tensor([0.5, 1 - 1e-5, 1 - 1e-5, -(1 - 1e-5)], dtype=torch.float64)
    torch.testing.assert_close(x.grad, 1 / (1 - z**2))
    assert x.grad[2].item() == pytest.approx(5.0e4, rel=1e-3)  # large but finite

    x2 = x.detach().clone().requires_grad_(True)
    hyp.artanh(x2, "exact").sum().backward()
    torch.testing.assert_close(x2.grad, torch.tensor([1 / 0.75, 0.0, 0.0, 0.0], dtype=torch.float64))
    with pytest.raises(KeyError, match="straight_through"):
        hyp.artanh(x, "bogus")


@pytest.mark.parametrize("method", hyp.PAIRWISE_METHODS)
@pytest.mark.parametrize("backward", hyp.ARTANH_BACKWARDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_finite_near_boundary_and_on_diagonal(method, backward, dtype):
    raw = torch.cat([_rand(6, 8, scale=20.0 / math.sqrt(8), seed=9), _rand(2, 8, scale=1e-3, seed=10)])
    raw = torch.cat([raw, raw[:1], torch.zeros(1, 8, dtype=raw.dtype)])  # exact duplicate and a zero vector
    u = raw.to(dtype).requires_grad_(True)
    x = hyp.to_poincare(u, C)
    d = hyp.pairwise_dist(x, x, C, method=method, artanh_backward=backward)
    assert torch.isfinite(d).all()
    (d * torch.linspace(0.5, 1.5, d.numel(), dtype=dtype).view_as(d)).sum().backward()
    assert torch.isfinite(u.grad).all()


def test_dist_gradient_of_identical_points_is_finite():
    x = torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float32, requires_grad=True)
    hyp.dist(x, x, C).sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_gradients_match_finite_differences():
    x = hyp.to_poincare(_rand(4, 3, scale=1.5, seed=11), C).requires_grad_(True)
    y = hyp.to_poincare(_rand(3, 3, scale=1.5, seed=12), C)
    assert torch.autograd.gradcheck(lambda a: hyp.pairwise_dist(a, y, C), (x,), eps=1e-6, atol=1e-6)
    u = _rand(4, 3, scale=3.0, seed=13).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: hyp.to_poincare(a, C), (u,), eps=1e-6, atol=1e-6)


def test_invalid_curvature_and_shapes_raise():
    with pytest.raises(ValueError, match="curvature"):
        hyp.expmap0(torch.zeros(2, 2), 0.0)
    with pytest.raises(ValueError, match="pairwise_dist"):
        hyp.pairwise_dist(torch.zeros(2, 3), torch.zeros(2, 4), C)
    with pytest.raises(KeyError, match="gram"):
        hyp.pairwise_dist(torch.zeros(2, 3), torch.zeros(2, 3), C, method="loop")


# ---------------------------------------------------------------------------
# geoopt as an oracle (float64); without geoopt only this comparison is skipped, not the file
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_agrees_with_geoopt(c):
    geoopt = pytest.importorskip("geoopt")
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))
    u = _rand(8, 5, scale=0.8, seed=14)
    # expmap0 (no projection is triggered at these norms)
    torch.testing.assert_close(hyp.expmap0(u, c), ball.expmap0(u, project=False), rtol=1e-10, atol=1e-12)
    x = hyp.expmap0(_rand(8, 5, scale=0.7, seed=15), c)
    y = hyp.expmap0(_rand(8, 5, scale=0.9, seed=16), c)
    # textbook Möbius addition without the reference's +1e-5
    torch.testing.assert_close(hyp.mobius_add(x, y, c, denom_eps=0.0), ball.mobius_add(x, y, project=False),
                               rtol=1e-10, atol=1e-12)
    # with the reference's +1e-5 the values differ only at the 1e-5 relative level
    torch.testing.assert_close(hyp.mobius_add(x, y, c), ball.mobius_add(x, y, project=False), rtol=5e-5, atol=1e-8)
    expected = ball.dist(x[:, None, :], y[None, :, :])
    for method in hyp.PAIRWISE_METHODS:
        got = hyp.pairwise_dist(x, y, c, method=method, denom_eps=0.0)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(hyp.dist(x, y, c, denom_eps=0.0), ball.dist(x, y), rtol=1e-9, atol=1e-10)
    # the reference's +1e-5 matters only where 1 − 2c⟨x,y⟩ + c²‖x‖²‖y‖² is small (near the boundary)
    if c == 0.1:
        torch.testing.assert_close(hyp.pairwise_dist(x, y, c), expected, rtol=1e-4, atol=1e-6)
