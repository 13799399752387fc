"""Poincaré-ball maths with curvature ``c`` (docs/METHOD.md §4.2), numerically guarded.

The ball of curvature ``-c`` is ``{x : c·‖x‖² < 1}``. All functions act on the last
dimension and broadcast over the leading ones.

Reference semantics reproduced here (hyptorch, as used by DistilVPR):

* ``expmap0(u) = tanh(√c·‖u‖)·u / (√c·‖u‖)`` with ``‖u‖`` clamped to ``≥ 1e-5`` and the
  tanh argument clamped to ``[-15, 15]``;
* ``project(x)`` rescales points with ``‖x‖ > (1 − 1e-3)/√c`` onto that radius;
* ``to_poincare = project ∘ expmap0`` (no Riemannian gradient rescaling, no clipping);
* ``mobius_add`` with ``+1e-5`` added to the denominator;
* ``dist(x, y) = (2/√c)·artanh(√c·‖(−x) ⊕_c y‖)``, ``artanh`` clamping to ``±(1 − 1e-5)``.

Numerical decisions (the reference would produce NaN or noise in these places):

* every Euclidean norm is computed as ``sqrt(max(Σx², floor))`` so that its gradient at
  an exactly-zero vector is 0 instead of ``0/0 = NaN`` (the value is unchanged wherever
  the reference's own clamps apply, e.g. ``max(‖u‖, 1e-5)``);
* :func:`pairwise_dist` (default ``method="gram"``) never builds the ``(B, B, D)`` Möbius
  sum. It uses the identity ``‖(−x) ⊕_c y‖_num = ‖x − y‖·√δ`` with
  ``δ = 1 − 2c⟨x,y⟩ + c²‖x‖²‖y‖²`` (the numerator of the Möbius sum has exactly this norm),
  so ``‖(−x) ⊕_c y‖ = ‖x − y‖·√δ / (δ + 1e-5)`` — the same function as the reference,
  including its ``+1e-5``, computed from one Gram matrix in float64 (no cancellation
  trouble for near-duplicate points, ~50× less memory). ``method="broadcast"`` is the
  literal ``(B, B, D)`` computation, kept for testing;
* the artanh backward is selectable: ``"straight_through"`` (default, faithful) returns
  ``g/(1 − z²)`` at the *clamped* ``z`` even where the input was beyond the clamp, so the
  gradient is at most ``1/(1 − (1 − 1e-5)²) ≈ 5.0e4`` — large but always finite;
  ``"exact"`` differentiates the clamp (zero gradient beyond it).
"""

from __future__ import annotations

import math

import torch

#: Clamp of the norm inside expmap0 (reference value).
MIN_NORM: float = 1e-5
#: Clamp of the tanh argument (reference value).
TANH_CLAMP: float = 15.0
#: Projection keeps ``‖x‖ ≤ (1 − BALL_EPS)/√c`` (reference value).
BALL_EPS: float = 1e-3
#: ``artanh`` clamps its input to ``±(1 − ARTANH_EPS)`` (reference value).
ARTANH_EPS: float = 1e-5
#: Added to the denominator of the Möbius addition (reference value).
MOBIUS_DENOM_EPS: float = 1e-5
#: Floor of a squared distance below which it counts as exactly zero (gradient 0 there).
_SQ_FLOOR = {torch.float64: 1e-30, torch.float32: 1e-24, torch.float16: 1e-8, torch.bfloat16: 1e-8}

ARTANH_BACKWARDS: tuple[str, ...] = ("straight_through", "exact")
PAIRWISE_METHODS: tuple[str, ...] = ("gram", "broadcast")


def safe_norm(x: torch.Tensor, dim: int = -1, keepdim: bool = False, floor: float | None = None) -> torch.Tensor:
    """Euclidean norm whose gradient is finite everywhere (0 at the zero vector).

    Args:
        x: (..., D).
        floor: squared-norm floor; below it the value is ``sqrt(floor)`` and the gradient 0.
            Default: a dtype-dependent tiny value, so the value differs from ``‖x‖`` by < 1e-12.
    Returns:
        (...,) or (..., 1) with ``keepdim``.
    """
    if floor is None:
        floor = _SQ_FLOOR.get(x.dtype, 1e-24)
    return x.pow(2).sum(dim=dim, keepdim=keepdim).clamp_min(floor).sqrt()


def _check_curvature(c: float) -> float:
    c = float(c)
    if not c > 0:
        raise ValueError(f"hyperbolic: curvature c must be > 0, got {c}")
    return c


def max_radius(c: float) -> float:
    """Largest norm kept by :func:`project`: ``(1 − 1e-3)/√c`` (3.15912 for c = 0.1)."""
    return (1.0 - BALL_EPS) / math.sqrt(_check_curvature(c))


def expmap0(u: torch.Tensor, c: float) -> torch.Tensor:
    """Exponential map at the origin. ``u`` (..., D) tangent vectors -> (..., D) ball points.

    ``tanh(√c·‖u‖)·u/(√c·‖u‖)`` with ``‖u‖ ≥ 1e-5`` and the tanh argument clamped to ±15.
    ``expmap0(0) = 0`` with zero (finite) gradient.
    """
    sqrt_c = math.sqrt(_check_curvature(c))
    norm = safe_norm(u, keepdim=True, floor=MIN_NORM**2)  # == max(‖u‖, 1e-5)
    scaled = sqrt_c * norm
    return torch.tanh(scaled.clamp(-TANH_CLAMP, TANH_CLAMP)) * u / scaled


def project(x: torch.Tensor, c: float) -> torch.Tensor:
    """Rescale points (..., D) whose norm exceeds ``(1 − 1e-3)/√c`` onto that radius."""
    radius = max_radius(c)
    norm = safe_norm(x, keepdim=True, floor=MIN_NORM**2)
    return torch.where(norm > radius, x * (radius / norm), x)


def to_poincare(u: torch.Tensor, c: float) -> torch.Tensor:
    """``ToPoincare(c, riemannian=False, clip_r=None)``: ``project(expmap0(u))``. (..., D) -> (..., D)."""
    return project(expmap0(u, c), c)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float, denom_eps: float = MOBIUS_DENOM_EPS) -> torch.Tensor:
    """Möbius addition ``x ⊕_c y`` (broadcasting, (..., D)).

    ``[(1 + 2c⟨x,y⟩ + c‖y‖²)·x + (1 − c‖x‖²)·y] / (1 + 2c⟨x,y⟩ + c²‖x‖²‖y‖² + denom_eps)``;
    ``denom_eps = 1e-5`` is the reference's (pass 0 for the textbook formula).
    """
    c = _check_curvature(c)
    xy = (x * y).sum(dim=-1, keepdim=True)
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    numerator = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    denominator = 1 + 2 * c * xy + c**2 * x2 * y2 + denom_eps
    return numerator / denominator


class _StraightThroughArtanh(torch.autograd.Function):
    """artanh of the clamped input; backward ``g/(1 − z²)`` at the clamped ``z`` (hyptorch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        z = x.clamp(-1 + ARTANH_EPS, 1 - ARTANH_EPS)
        ctx.save_for_backward(z)
        return 0.5 * (torch.log1p(z) - torch.log1p(-z))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (z,) = ctx.saved_tensors
        return grad / (1 - z.pow(2))


def artanh(x: torch.Tensor, backward: str = "straight_through") -> torch.Tensor:
    """Inverse hyperbolic tangent of ``x`` clamped to ``±(1 − 1e-5)``.

    Args:
        x: any shape.
        backward: ``"straight_through"`` (reference: gradient ``g/(1 − z²)`` at the clamped
            ``z`` even beyond the clamp, bounded by ≈ 5.0e4) or ``"exact"`` (autograd through
            the clamp: zero gradient beyond it).
    """
    if backward == "straight_through":
        return _StraightThroughArtanh.apply(x)
    if backward == "exact":
        z = x.clamp(-1 + ARTANH_EPS, 1 - ARTANH_EPS)
        return 0.5 * (torch.log1p(z) - torch.log1p(-z))
    raise KeyError(f"unknown artanh backward {backward!r}; known: {list(ARTANH_BACKWARDS)}")


def dist(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float,
    artanh_backward: str = "straight_through",
    denom_eps: float = MOBIUS_DENOM_EPS,
) -> torch.Tensor:
    """Geodesic distance ``(2/√c)·artanh(√c·‖(−x) ⊕_c y‖)`` (broadcasting). (..., D) -> (...).

    ``denom_eps`` is the Möbius denominator's ``+1e-5`` (pass 0 for the textbook distance).
    """
    sqrt_c = math.sqrt(_check_curvature(c))
    diff = mobius_add(-x, y, c, denom_eps)
    return (2.0 / sqrt_c) * artanh(sqrt_c * safe_norm(diff), artanh_backward)


def working_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 for the Gram-based closed forms (float32 on MPS, which has no float64)."""
    if x.device.type == "mps":
        return torch.float32
    return torch.float64


def pairwise_sq_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖x_i − y_j‖²`` for x (B, D), y (M, D) -> (B, M), from a float64 Gram matrix, clamped at 0.

    Returned in float64 (callers cast back); centring on the joint mean first removes the
    cancellation of large common offsets (distances are translation invariant).
    """
    work = working_dtype(x)
    x64, y64 = x.to(work), y.to(work)
    centre = torch.cat([x64, y64], dim=0).mean(dim=0, keepdim=True).detach()
    x64, y64 = x64 - centre, y64 - centre
    sq = x64.pow(2).sum(-1)[:, None] + y64.pow(2).sum(-1)[None, :] - 2.0 * (x64 @ y64.T)
    return sq.clamp_min(0.0)


def pairwise_dist(
    x: torch.Tensor,
    y: torch.Tensor,
    c: float,
    *,
    method: str = "gram",
    artanh_backward: str = "straight_through",
    denom_eps: float = MOBIUS_DENOM_EPS,
) -> torch.Tensor:
    """Geodesic distance matrix ``M[i, j] = d_c(x_i, y_j)`` for ball points x (B, D), y (M, D) -> (B, M).

    Args:
        method: ``"gram"`` (default; closed form from one float64 Gram matrix, exact same
            function as the reference, ``O(B·M)`` memory) or ``"broadcast"`` (the reference's
            literal ``(B, M, D)`` Möbius sum).
        artanh_backward: see :func:`artanh`.
        denom_eps: the Möbius denominator's ``+1e-5`` (0 = textbook distance).
    Returns:
        (B, M) in the dtype of ``x``. Exactly-coincident points give 0 with zero gradient.
    """
    c = _check_curvature(c)
    sqrt_c = math.sqrt(c)
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"pairwise_dist: expected (B, D) and (M, D), got {tuple(x.shape)} and {tuple(y.shape)}")
    if method == "broadcast":
        return dist(x[:, None, :], y[None, :, :], c, artanh_backward, denom_eps)
    if method != "gram":
        raise KeyError(f"unknown pairwise method {method!r}; known: {list(PAIRWISE_METHODS)}")
    work = working_dtype(x)
    x64, y64 = x.to(work), y.to(work)
    x2 = x64.pow(2).sum(-1)[:, None]
    y2 = y64.pow(2).sum(-1)[None, :]
    gram = x64 @ y64.T
    sq_euclid = pairwise_sq_euclidean(x, y)
    # δ = 1 + 2c⟨−x, y⟩ + c²‖x‖²‖y‖² = ‖numerator‖² / ‖x − y‖²; > 0 inside the ball.
    delta = (1.0 - 2.0 * c * gram + c**2 * x2 * y2).clamp_min(0.0)
    # ‖(−x) ⊕ y‖ = sqrt(‖x − y‖² · δ) / (δ + 1e-5); the floor gives 0 (grad 0) for coincident points.
    num_norm = (sq_euclid * delta).clamp_min(_SQ_FLOOR[work]).sqrt()
    mobius_norm = num_norm / (delta + denom_eps)
    out = (2.0 / sqrt_c) * artanh(sqrt_c * mobius_norm, artanh_backward)
    return out.to(x.dtype)
