"""DistilVPR's relational losses: the self-agent RKD-G (docs/METHOD.md §4.3) and the cross-agent losses (§4.4).

Self-agent (teacher–teacher vs student–student, on RAW embeddings):

* ``rkdg_distance``  L_D = SmoothL1(ψ̃(S), ψ̃(T)), ψ_ij = √max(‖x_i − x_j‖², 1e-12), ψ_ii = 0,
  ψ̃ = ψ / mean{ψ_ij > 0}; the student's normaliser keeps its gradient.
* ``rkdg_angle``     L_A = SmoothL1(A(S), A(T)) over all B³ triples (degenerate ones included),
  A_ijk = ⟨e_ij, e_ik⟩, e_ij = (x_j − x_i)/max(‖x_j − x_i‖, 1e-12).
* ``rkdg_geodesic``  L_G = SmoothL1(G̃^S, sg[G̃^T]), G = dist_matrix(ToPoincare(x)) mean-normalised.

Cross-agent (on normalised inputs ŝ, t̂; per geometry g ∈ {euclidean, spherical, hyperbolic}):

* ``cross_<g>_st2ss`` = loss(SS_g, sg[ST_g])  — only the student self-relation gets gradient;
* ``cross_<g>_tt2st`` = loss(ST_g, sg[TT_g])  — gradient through the student half of ST;
* ``cross_<g>_poincare_*`` (g ∈ {euclidean, spherical}): the same on ToPoincare(ŝ), ToPoincare(t̂)
  (``--logit_mapping_fn topoincare`` / ``id_topoin``).

Park et al., "Relational Knowledge Distillation", CVPR 2019 (distance and angle terms);
Wang et al., "DistilVPR: Cross-Modal Knowledge Distillation for Visual Place Recognition",
AAAI 2024 (geodesic term, cross-agent losses).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from . import hyperbolic, relations
from ._register import register_loss
from .base import DistillLoss, check_pair, pointwise_loss

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DistillConfig

#: Floor of the squared distance in RKD-D (reference value).
RKD_DISTANCE_SQ_FLOOR: float = 1e-12
#: Norm floor of the unit difference vectors in RKD-A (reference value).
RKD_ANGLE_EPS: float = 1e-12
ANGLE_METHODS: tuple[str, ...] = ("gram", "broadcast")


# ---------------------------------------------------------------------------
# relation functions
# ---------------------------------------------------------------------------
def mean_positive_normalize(matrix: torch.Tensor) -> torch.Tensor:
    """``M / mean{M_ij : M_ij > 0}`` (gradient flows through the mean); unchanged if no entry is > 0."""
    positive = matrix > 0
    count = positive.sum()
    if int(count) == 0:
        return matrix
    mean = (matrix * positive).sum() / count
    return matrix / mean


def rkd_distance_matrix(x: torch.Tensor) -> torch.Tensor:
    """RKD distance relation ψ (B, D) -> (B, B): ``√max(‖x_i − x_j‖², 1e-12)`` with ``ψ_ii = 0``.

    The squared distances come from a centred float64 Gram matrix (the reference uses the
    float32 Gram formula; same function, less rounding).
    """
    sq = hyperbolic.pairwise_sq_euclidean(x, x)
    psi = sq.clamp_min(RKD_DISTANCE_SQ_FLOOR).sqrt()
    eye = torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return psi.masked_fill(eye, 0.0).to(x.dtype)


def rkd_angle_tensor(x: torch.Tensor, method: str = "gram") -> torch.Tensor:
    """RKD angle relation (B, D) -> (B, B, B): ``A[i, j, k] = ⟨e_ij, e_ik⟩``, ``e_ij = unit(x_j − x_i)``.

    Args:
        method: ``"gram"`` (default): ``(G_jk − G_ij − G_ik + G_ii)/(‖x_j − x_i‖‖x_k − x_i‖)``
            from one centred float64 Gram matrix — O(B²D + B³) instead of the reference's
            O(B³D) batched product, same values (1e-12 relative) and gradients;
            ``e_ii = 0`` so degenerate triples give 0 exactly as in the reference.
            ``"broadcast"``: the literal (B, B, D) construction (also returns 0 for exact
            duplicate samples j ≠ i, which ``"gram"`` resolves only up to rounding).
    """
    batch = x.shape[0]
    if method == "broadcast":
        diff = x[None, :, :] - x[:, None, :]  # [i, j] = x_j - x_i
        unit = diff / hyperbolic.safe_norm(diff, keepdim=True, floor=RKD_ANGLE_EPS**2)
        return torch.bmm(unit, unit.transpose(1, 2))
    if method != "gram":
        raise KeyError(f"unknown angle method {method!r}; known: {list(ANGLE_METHODS)}")
    return _angle_rows(*_angle_factors(x), 0, batch).to(x.dtype)


def geodesic_relation(x: torch.Tensor, curvature: float, artanh_backward: str = "straight_through") -> torch.Tensor:
    """Self geodesic relation (B, D) -> (B, B): ``d_c(ToPoincare(x_i), ToPoincare(x_j))``, zero diagonal."""
    return relations.hyperbolic_distance_matrix(x, None, curvature, artanh_backward=artanh_backward)


def rkd_distance_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L_D = SmoothL1(ψ̃(S), ψ̃(T)) with mean-of-positive normalisation; (B, D), (B, D) -> scalar."""
    with torch.no_grad():
        target = mean_positive_normalize(rkd_distance_matrix(teacher))
    return F.smooth_l1_loss(mean_positive_normalize(rkd_distance_matrix(student)), target, beta=1.0)


#: Squared distances below this fraction of ‖x_i‖² + ‖x_j‖² (centred, float64) count as exact duplicates.
_GRAM_RELATIVE_TOLERANCE: float = 1e-10


def _angle_factors(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centred float64 Gram matrix G (B, B), its diagonal (B,) and ``1/‖x_j − x_i‖`` (B, B, 0 on the diagonal)."""
    x64 = x.to(hyperbolic.working_dtype(x))
    x64 = x64 - x64.mean(dim=0, keepdim=True).detach()
    gram = x64 @ x64.T
    diag = torch.diagonal(gram)
    scale = diag[:, None] + diag[None, :]
    sq = (scale - 2.0 * gram).clamp_min(0.0)
    inv_norm = 1.0 / sq.clamp_min(RKD_ANGLE_EPS**2).sqrt()
    # Pairs whose squared distance is rounding noise of the Gram expansion (duplicate samples, e.g. a
    # sub-map the sampler repeats in a batch) are degenerate: e_ij = 0 exactly, as the reference's
    # normalize(x_j - x_i) of a zero vector. Without this, noise / tiny norm gives |A| >> 1.
    degenerate = sq <= _GRAM_RELATIVE_TOLERANCE * scale
    degenerate |= torch.eye(x.shape[0], dtype=torch.bool, device=x.device)
    return gram, diag, inv_norm.masked_fill(degenerate, 0.0)


def _angle_rows(gram: torch.Tensor, diag: torch.Tensor, inv_norm: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``A[lo:hi]`` (hi − lo, B, B) from :func:`_angle_factors`."""
    numerator = gram[None, :, :] - gram[lo:hi, :, None] - gram[lo:hi, None, :] + diag[lo:hi, None, None]
    return numerator * inv_norm[lo:hi, :, None] * inv_norm[lo:hi, None, :]


def rkd_angle_loss(
    student: torch.Tensor, teacher: torch.Tensor, method: str = "gram", chunk_size: int = 16
) -> torch.Tensor:
    """L_A = SmoothL1(A(S), A(T)) averaged over all B³ entries; (B, D), (B, D) -> scalar.

    ``method="gram"`` evaluates the B³ tensor in float64 blocks of ``chunk_size`` vertices
    (cache-sized; about 2× faster than one block and about 6× faster than ``"broadcast"`` at
    B = 128, D = 384 on one CPU thread, see ``benchmarks/bench_distill_overhead.py``), with the same
    value and gradient as the reference's construction up to float64 rounding.
    """
    if method == "broadcast":
        with torch.no_grad():
            target = rkd_angle_tensor(teacher, method)
        return F.smooth_l1_loss(rkd_angle_tensor(student, method), target, beta=1.0)
    if method != "gram":
        raise KeyError(f"unknown angle method {method!r}; known: {list(ANGLE_METHODS)}")
    batch = student.shape[0]
    factors_s = _angle_factors(student)
    with torch.no_grad():
        factors_t = _angle_factors(teacher)
    total = student.new_zeros((), dtype=hyperbolic.working_dtype(student))
    for lo in range(0, batch, max(1, int(chunk_size))):
        hi = min(batch, lo + max(1, int(chunk_size)))
        with torch.no_grad():
            target = _angle_rows(*factors_t, lo, hi)
        total = total + F.smooth_l1_loss(_angle_rows(*factors_s, lo, hi), target, beta=1.0, reduction="sum")
    return (total / batch**3).to(student.dtype)


def geodesic_loss(
    student: torch.Tensor, teacher: torch.Tensor, curvature: float, artanh_backward: str = "straight_through"
) -> torch.Tensor:
    """L_G = SmoothL1(G̃^S, sg[G̃^T]) on raw embeddings mapped by ToPoincare; (B, D), (B, D) -> scalar."""
    with torch.no_grad():
        target = mean_positive_normalize(geodesic_relation(teacher, curvature, artanh_backward))
    prediction = mean_positive_normalize(geodesic_relation(student, curvature, artanh_backward))
    return F.smooth_l1_loss(prediction, target, beta=1.0)


# ---------------------------------------------------------------------------
# self-agent losses
# ---------------------------------------------------------------------------
@register_loss("rkdg")
class RKDGLoss(DistillLoss):
    """Self-agent RKD-G (docs/METHOD.md §4.3): ``w_D·L_D + w_A·L_A + w_G·L_G`` on raw embeddings.

    ``L_D``: RKD distance (SmoothL1 of mean-normalised distance matrices);
    ``L_A``: RKD angle over all B³ triples; ``L_G``: SmoothL1 of mean-normalised Poincaré
    geodesic-distance matrices (c = ``curvature``) of ``ToPoincare(s)`` vs ``ToPoincare(t)``.
    Terms: ``rkdg_distance``, ``rkdg_angle``, ``rkdg_geodesic``; group weight ``rkdg``
    (10 Oxford, 1 Boreas) times the internal weights (``DistillConfig.rkdg_*_weight``, 1/1/1).

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019; Wang et al., DistilVPR, AAAI 2024.
    """

    dimension_free = True

    components: ClassVar[tuple[str, ...]] = ("distance", "angle", "geodesic")
    grouped: ClassVar[bool] = True

    def __init__(self, curvature: float = 0.1, artanh_backward: str = "straight_through", angle_method: str = "gram"):
        super().__init__()
        self.curvature = float(curvature)
        self.artanh_backward = artanh_backward
        self.angle_method = angle_method

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "RKDGLoss":
        return cls(cfg.curvature, cfg.artanh_backward, cfg.angle_method)

    @classmethod
    def internal_weight_defaults(cls, cfg: "DistillConfig") -> dict[str, float]:
        return {
            "rkdg_distance": cfg.rkdg_distance_weight,
            "rkdg_angle": cfg.rkdg_angle_weight,
            "rkdg_geodesic": cfg.rkdg_geodesic_weight,
        }

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        return self.pair_terms(student, teacher, terms, {
            "distance": rkd_distance_loss,
            "angle": lambda s, t: rkd_angle_loss(s, t, self.angle_method),
            "geodesic": lambda s, t: geodesic_loss(s, t, self.curvature, self.artanh_backward),
        })


@register_loss("rkdg2")
class RKDG2Loss(RKDGLoss):
    """RKD-G variant "rkdg2" (authors' baseline file, docs/METHOD.md §4.6): the angle term is replaced by
    ``SmoothL1(cos(S), cos(T))`` of the plain (B, B) cosine-similarity matrices.

    Terms ``rkdg2_distance``, ``rkdg2_cosine``, ``rkdg2_geodesic`` (group ``rkdg2``, internal 1/1/1).
    """

    components: ClassVar[tuple[str, ...]] = ("distance", "cosine", "geodesic")

    @classmethod
    def internal_weight_defaults(cls, cfg: "DistillConfig") -> dict[str, float]:
        return {term: 1.0 for term in cls.term_names()}

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        return self.pair_terms(student, teacher, terms, {
            "distance": rkd_distance_loss,
            "cosine": lambda s, t: F.smooth_l1_loss(relations.cosine_similarity_matrix(s),
                                                    relations.cosine_similarity_matrix(t), beta=1.0),
            "geodesic": lambda s, t: geodesic_loss(s, t, self.curvature, self.artanh_backward),
        })


# ---------------------------------------------------------------------------
# cross-agent losses
# ---------------------------------------------------------------------------
class CrossAgentLoss(DistillLoss):
    """Cross-agent loss of one geometry (docs/METHOD.md §4.4).

    ``st2ss = loss(SS, sg[ST])`` and ``tt2st = loss(ST, sg[TT])`` on normalised inputs
    (``norm_fn``), optionally after the Poincaré logit mapping. ``loss`` is the mean over
    all B² entries of MSE (default) or L1; no mean-normalisation, no temperature.
    """

    components: ClassVar[tuple[str, ...]] = ("st2ss", "tt2st")
    geometry: ClassVar[str] = ""
    mapping: ClassVar[str] = "identity"

    def __init__(
        self,
        curvature: float = 0.1,
        loss_type: str = "mse",
        norm_fn: str = "l2",
        divide: bool = True,
        artanh_backward: str = "straight_through",
    ):
        super().__init__()
        if loss_type not in ("mse", "l1"):
            raise KeyError(f"unknown cross-agent loss type {loss_type!r}; known: ['l1', 'mse']")
        if norm_fn not in relations.NORM_FNS:
            raise KeyError(f"unknown norm_fn {norm_fn!r}; known: {list(relations.NORM_FNS)}")
        self.curvature = float(curvature)
        self.loss_type = loss_type
        self.norm_fn = norm_fn
        self.divide = bool(divide)
        self.artanh_backward = artanh_backward

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "CrossAgentLoss":
        return cls(cfg.curvature, cfg.cross_loss_type, cfg.cross_norm_fn, cfg.cross_sim_divide, cfg.artanh_backward)

    def relation_inputs(self, student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (and possibly Poincaré-mapped) inputs (B, D), (B, D) of the relation matrices."""
        s_hat, t_hat = relations.normalize_pair(student, teacher, self.norm_fn)
        return (
            relations.map_logits(s_hat, self.mapping, self.curvature),
            relations.map_logits(t_hat, self.mapping, self.curvature),
        )

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, self.name)
        wanted = self._wanted(terms)
        st2ss, tt2st = f"{self.name}_st2ss", f"{self.name}_tt2st"
        pairings = set()
        if st2ss in wanted:
            pairings |= {"SS", "ST"}
        if tt2st in wanted:
            pairings |= {"ST", "TT"}
        if not pairings:
            return {}
        s_in, t_in = self.relation_inputs(student, teacher.detach())
        mats = relations.agent_relations(
            s_in,
            t_in,
            self.geometry,
            curvature=self.curvature,
            divide=self.divide,
            artanh_backward=self.artanh_backward,
            pairings=tuple(sorted(pairings)),
        )
        out: dict[str, torch.Tensor] = {}
        if st2ss in wanted:
            out[st2ss] = pointwise_loss(mats["SS"], mats["ST"].detach(), self.loss_type)
        if tt2st in wanted:
            out[tt2st] = pointwise_loss(mats["ST"], mats["TT"].detach(), self.loss_type)
        return out


@register_loss("cross_euclidean")
class CrossEuclideanLoss(CrossAgentLoss):
    """Cross-agent Euclidean-distance relations (``crosslogitdist``): R_ij = ‖a_i − b_j‖.

    Terms ``cross_euclidean_st2ss`` = MSE(SS, sg[ST]), ``cross_euclidean_tt2st`` = MSE(ST, sg[TT]).
    Wang et al., DistilVPR, AAAI 2024.
    """

    geometry = "euclidean"


@register_loss("cross_spherical")
class CrossSphericalLoss(CrossAgentLoss):
    """Cross-agent cosine-similarity relations (``crosslogitsim``): R_ij = ⟨a_i, b_j⟩/(‖a_i‖‖b_j‖)
    (raw dot products with ``cross_sim_divide=False``).

    Terms ``cross_spherical_st2ss``, ``cross_spherical_tt2st``. Wang et al., DistilVPR, AAAI 2024.
    """

    geometry = "spherical"


@register_loss("cross_hyperbolic")
class CrossHyperbolicLoss(CrossAgentLoss):
    """Cross-agent Poincaré geodesic relations (``crosslogitgeodist``): R_ij = d_c(u_i, v_j),
    u = ToPoincare(ŝ), v = ToPoincare(t̂) (c = ``curvature``, 0.1).

    Terms ``cross_hyperbolic_st2ss``, ``cross_hyperbolic_tt2st``. Wang et al., DistilVPR, AAAI 2024.
    """

    geometry = "hyperbolic"


@register_loss("cross_euclidean_poincare")
class CrossEuclideanPoincareLoss(CrossAgentLoss):
    """Cross-agent Euclidean relations on Poincaré-mapped inputs (``--logit_mapping_fn topoincare``):
    R_ij = ‖ToPoincare(â_i) − ToPoincare(b̂_j)‖. Terms ``cross_euclidean_poincare_{st2ss,tt2st}``.
    """

    geometry = "euclidean"
    mapping = "poincare"


@register_loss("cross_spherical_poincare")
class CrossSphericalPoincareLoss(CrossAgentLoss):
    """Cross-agent cosine relations on Poincaré-mapped inputs (``--logit_mapping_fn topoincare``).

    Terms ``cross_spherical_poincare_{st2ss,tt2st}``.
    """

    geometry = "spherical"
    mapping = "poincare"
