"""Relation matrices between agents, per geometry (docs/METHOD.md §4.3–§4.4).

An *agent pairing* is a pair of embedding sets: SS (student, student), ST (student,
teacher) and TT (teacher, teacher). A relation matrix ``R[i, j]`` relates row-sample ``i``
of the first set to sample ``j`` of the second. Geometries:

=============  ====================================================  =====================
geometry       ``R[i, j]``                                            diagonal of SS / TT
=============  ====================================================  =====================
euclidean      ``‖a_i − b_j‖``                                         0 (exact, no gradient)
spherical      ``⟨a_i, b_j⟩/(‖a_i‖‖b_j‖)`` (``divide``) or ``⟨a_i, b_j⟩``   computed
hyperbolic     ``d_c(ToPoincare(a_i), ToPoincare(b_j))``               0 (exact, no gradient)
=============  ====================================================  =====================

For the cross matrix ST the reference indexes ``‖ŝ_j − t̂_i‖`` for the Euclidean case and
``⟨ŝ_i, t̂_j⟩`` for the cosine case; since SS and TT are symmetric and the losses are
entry-wise means, the orientation of ST does not change any loss. Here ST is always
``R(student, teacher)`` (rows = student samples).

Self relations (``a is b``) get an exactly-zero diagonal for the distance geometries; the
reference's diagonal is rounding noise (~1e-7) whose gradient is meaningless and which
would otherwise count among the "positive entries" of the mean normaliser of §4.3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import hyperbolic

GEOMETRIES: tuple[str, ...] = ("euclidean", "spherical", "hyperbolic")
NORM_FNS: tuple[str, ...] = ("l2", "softmax", "log_softmax", "identity")
LOGIT_MAPPINGS: tuple[str, ...] = ("identity", "topoincare", "id_topoin")
#: Lower bound of the norms in the L2 normalisation (reference: ``F.normalize`` eps).
L2_EPS: float = 1e-12
#: Lower bound of ``‖a_i‖·‖b_j‖`` in the cosine similarity.
COSINE_EPS: float = 1e-8


def l2_normalize(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """``x_i / max(‖x_i‖, eps)`` row-wise, (B, D) -> (B, D); zero rows stay zero with finite gradient."""
    return x / hyperbolic.safe_norm(x, keepdim=True, floor=eps**2)


def normalize_pair(student: torch.Tensor, teacher: torch.Tensor, norm_fn: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Input normalisation of the cross-agent losses (``--cross*_logit_norm_fn``).

    Args:
        student, teacher: (B, D).
        norm_fn: ``"l2"`` (both L2-normalised), ``"softmax"`` (both softmax over D),
            ``"log_softmax"`` (student log-softmax, teacher softmax) or ``"identity"``.
    Returns:
        (ŝ, t̂), each (B, D).
    """
    if norm_fn == "l2":
        return l2_normalize(student), l2_normalize(teacher)
    if norm_fn == "softmax":
        return F.softmax(student, dim=1), F.softmax(teacher, dim=1)
    if norm_fn == "log_softmax":
        return F.log_softmax(student, dim=1), F.softmax(teacher, dim=1)
    if norm_fn == "identity":
        return student, teacher
    raise KeyError(f"unknown norm_fn {norm_fn!r}; known: {list(NORM_FNS)}")


def euclidean_distance_matrix(a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``‖a_i − b_j‖`` for a (B, D), b (M, D) -> (B, M) (``b=None``: self relation, zero diagonal).

    Computed from a centred float64 Gram matrix; zero distances have zero gradient.
    """
    self_relation = b is None
    sq = hyperbolic.pairwise_sq_euclidean(a, a if b is None else b)
    dist = sq.clamp_min(1e-30).sqrt()
    dist = torch.where(sq > 0, dist, torch.zeros_like(dist))
    if self_relation:
        dist = _zero_diagonal(dist)
    return dist.to(a.dtype)


def cosine_similarity_matrix(a: torch.Tensor, b: torch.Tensor | None = None, divide: bool = True) -> torch.Tensor:
    """``⟨a_i, b_j⟩ / max(‖a_i‖‖b_j‖, 1e-8)`` (``divide``) or ``⟨a_i, b_j⟩``. (B, D), (M, D) -> (B, M)."""
    b = a if b is None else b
    dots = a @ b.T
    if not divide:
        return dots
    norms = hyperbolic.safe_norm(a)[:, None] * hyperbolic.safe_norm(b)[None, :]
    return dots / norms.clamp_min(COSINE_EPS)


def hyperbolic_distance_matrix(
    a: torch.Tensor,
    b: torch.Tensor | None = None,
    curvature: float = 0.1,
    *,
    map_to_ball: bool = True,
    artanh_backward: str = "straight_through",
    method: str = "gram",
) -> torch.Tensor:
    """``d_c(u_i, v_j)`` with ``u = ToPoincare(a)``, ``v = ToPoincare(b)``. (B, D), (M, D) -> (B, M).

    ``map_to_ball=False`` when the inputs already are ball points. ``b=None``: self relation
    with an exactly-zero diagonal.
    """
    u = hyperbolic.to_poincare(a, curvature) if map_to_ball else a
    if b is None:
        dist = hyperbolic.pairwise_dist(u, u, curvature, method=method, artanh_backward=artanh_backward)
        return _zero_diagonal(dist)
    v = hyperbolic.to_poincare(b, curvature) if map_to_ball else b
    return hyperbolic.pairwise_dist(u, v, curvature, method=method, artanh_backward=artanh_backward)


def relation_matrix(
    a: torch.Tensor,
    b: torch.Tensor | None,
    geometry: str,
    *,
    curvature: float = 0.1,
    divide: bool = True,
    artanh_backward: str = "straight_through",
) -> torch.Tensor:
    """Relation matrix of one geometry (see the module table). (B, D), (M, D) | None -> (B, M)."""
    if geometry == "euclidean":
        return euclidean_distance_matrix(a, b)
    if geometry == "spherical":
        return cosine_similarity_matrix(a, b, divide=divide)
    if geometry == "hyperbolic":
        return hyperbolic_distance_matrix(a, b, curvature, artanh_backward=artanh_backward)
    raise KeyError(f"unknown geometry {geometry!r}; known: {list(GEOMETRIES)}")


def agent_relations(
    student: torch.Tensor,
    teacher: torch.Tensor,
    geometry: str,
    *,
    curvature: float = 0.1,
    divide: bool = True,
    artanh_backward: str = "straight_through",
    pairings: tuple[str, ...] = ("SS", "ST", "TT"),
) -> dict[str, torch.Tensor]:
    """The SS, ST and TT relation matrices (each (B, B)) of one geometry on already-normalised inputs.

    Only the requested ``pairings`` are computed. ST rows are student samples.
    """
    unknown = set(pairings) - {"SS", "ST", "TT"}
    if unknown:
        raise KeyError(f"unknown agent pairings {sorted(unknown)}; known: ['SS', 'ST', 'TT']")
    kwargs = dict(curvature=curvature, divide=divide, artanh_backward=artanh_backward)
    out: dict[str, torch.Tensor] = {}
    if "SS" in pairings:
        out["SS"] = relation_matrix(student, None, geometry, **kwargs)
    if "ST" in pairings:
        out["ST"] = relation_matrix(student, teacher, geometry, **kwargs)
    if "TT" in pairings:
        out["TT"] = relation_matrix(teacher, None, geometry, **kwargs)
    return out


def map_logits(x: torch.Tensor, mapping: str, curvature: float) -> torch.Tensor:
    """One ``--logit_mapping_fn`` branch: ``"identity"`` -> x, ``"poincare"`` -> ToPoincare(x). (B, D) -> (B, D)."""
    if mapping == "identity":
        return x
    if mapping == "poincare":
        return hyperbolic.to_poincare(x, curvature)
    raise KeyError(f"unknown logit mapping branch {mapping!r}; known: ['identity', 'poincare']")


def mapping_branches(logit_mapping: str) -> tuple[str, ...]:
    """Branches of a ``--logit_mapping_fn`` value: identity -> (identity,), topoincare -> (poincare,),
    id_topoin -> (identity, poincare)."""
    table = {"identity": ("identity",), "topoincare": ("poincare",), "id_topoin": ("identity", "poincare")}
    if logit_mapping not in table:
        raise KeyError(f"unknown logit_mapping {logit_mapping!r}; known: {list(LOGIT_MAPPINGS)}")
    return table[logit_mapping]


def _zero_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(matrix.shape[0], matrix.shape[1], dtype=torch.bool, device=matrix.device)
    return matrix.masked_fill(eye, 0.0)
