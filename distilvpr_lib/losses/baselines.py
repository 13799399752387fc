"""Distillation baselines on (B, D) embeddings (docs/METHOD.md §4.6 and the cited papers).

Every loss takes the student (B, D) and the (detached) teacher (B, D) embeddings and returns
a dict of unweighted terms. The KD-style losses treat the metric embeddings as logits, as
the authors' baselines do (docs/METHOD.md §8.15).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F

from . import relations
from ._register import register_loss
from .base import DistillLoss, check_masks, check_pair, kd_kl, pointwise_loss
from .relational import rkd_angle_loss, rkd_distance_loss

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DistillConfig


@register_loss("kd")
class KDLoss(DistillLoss):
    """Hinton knowledge distillation with the embeddings as logits.

    ``L = T² · (1/B) Σ_b Σ_d p^t_bd (log p^t_bd − log p^s_bd)``, ``p = softmax(x/T)`` over the
    D dimensions (KL(softmax(t/T) ‖ softmax(s/T)) summed over dimensions, averaged over the
    batch). T = ``kd_temperature`` (1).

    Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", NIPS DL Workshop 2015.
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "KDLoss":
        return cls(cfg.kd_temperature)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "kd")
        self._wanted(terms)
        return {"kd": kd_kl(student, teacher.detach(), self.temperature)}


@register_loss("rkd")
class RKDLoss(DistillLoss):
    """Relational KD: distance + angle terms exactly as in RKD-G (§4.3) without the geodesic term.

    ``rkd_distance`` = SmoothL1(ψ(S)/μ_S, ψ(T)/μ_T), ψ_ij = ‖x_i − x_j‖, μ = mean of the
    positive entries; ``rkd_angle`` = SmoothL1(A(S), A(T)), A_ijk = cos∠(x_j − x_i, x_k − x_i)
    over B³. Group weight ``rkd`` × internal weights (1, 1).

    Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.
    """

    dimension_free = True

    components: ClassVar[tuple[str, ...]] = ("distance", "angle")
    grouped: ClassVar[bool] = True

    def __init__(self, angle_method: str = "gram"):
        super().__init__()
        self.angle_method = angle_method

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "RKDLoss":
        return cls(cfg.angle_method)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        return self.pair_terms(student, teacher, terms, {
            "distance": rkd_distance_loss,
            "angle": lambda s, t: rkd_angle_loss(s, t, self.angle_method),
        })


def _pkt_conditional(x: torch.Tensor, eps: float) -> torch.Tensor:
    unit = x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    kernel = (unit @ unit.T + 1.0) / 2.0  # cosine kernel shifted to [0, 1]
    return kernel / kernel.sum(dim=1, keepdim=True)


@register_loss("pkt")
class PKTLoss(DistillLoss):
    """Probabilistic knowledge transfer with the cosine kernel.

    ``K_ij = (1 + cos(x_i, x_j))/2``, conditional probabilities ``P_ij = K_ij / Σ_k K_ik``
    (diagonal included), ``L = (1/B²) Σ_ij P^t_ij · log((P^t_ij + ε)/(P^s_ij + ε))`` with
    ε = ``pkt_eps`` (1e-7), the feature norm also offset by ε.

    Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", ECCV 2018.
    """

    dimension_free = True

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = float(eps)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "PKTLoss":
        return cls(cfg.pkt_eps)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "pkt", same_dim=not self.dimension_free)
        self._wanted(terms)
        p_student = _pkt_conditional(student, self.eps)
        p_teacher = _pkt_conditional(teacher.detach(), self.eps)
        loss = (p_teacher * torch.log((p_teacher + self.eps) / (p_student + self.eps))).mean()
        return {"pkt": loss}


@register_loss("sp")
class SPLoss(DistillLoss):
    """Similarity-preserving KD on the (B, D) embeddings.

    ``G = X Xᵀ`` (B, B), rows L2-normalised: ``G̃_i = G_i / ‖G_i‖``;
    ``L = (1/B²) ‖G̃^t − G̃^s‖_F²``.

    Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.
    """

    dimension_free = True

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "sp", same_dim=not self.dimension_free)
        self._wanted(terms)
        batch = student.shape[0]
        g_student = relations.l2_normalize(student @ student.T)
        g_teacher = relations.l2_normalize(teacher.detach() @ teacher.detach().T)
        return {"sp": (g_teacher - g_student).pow(2).sum() / batch**2}


def _cc_correlation(x: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    unit = relations.l2_normalize(x)
    dots = unit @ unit.T
    series = torch.zeros_like(dots)
    term = torch.ones_like(dots)
    for p in range(order + 1):
        if p > 0:
            term = term * (2.0 * gamma * dots) / p
        series = series + term
    # exp(-γ‖a − b‖²) = exp(-γ‖a‖²)·exp(-γ‖b‖²)·exp(2γ⟨a, b⟩) with ‖a‖ = ‖b‖ = 1
    return torch.exp(torch.tensor(-2.0 * gamma, dtype=x.dtype, device=x.device)) * series


@register_loss("cc")
class CCLoss(DistillLoss):
    """Correlation congruence with a Taylor-approximated Gaussian RBF kernel.

    Choice made here: features are L2-normalised, so
    ``k(a, b) = exp(−γ‖a − b‖²) = e^{−2γ} · exp(2γ⟨a, b⟩) ≈ e^{−2γ} Σ_{p=0}^{P} (2γ⟨a, b⟩)^p / p!``
    with γ = ``cc_gamma`` (0.4) and P = ``cc_order`` (2); ``L = (1/B²) ‖C^t − C^s‖_F²`` where
    ``C_ij = k(x_i, x_j)``. (The paper's instance-level term is left to the other losses.)

    Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.
    """

    def __init__(self, gamma: float = 0.4, order: int = 2):
        super().__init__()
        self.gamma = float(gamma)
        self.order = int(order)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "CCLoss":
        return cls(cfg.cc_gamma, cfg.cc_order)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "cc")
        self._wanted(terms)
        batch = student.shape[0]
        c_student = _cc_correlation(student, self.gamma, self.order)
        c_teacher = _cc_correlation(teacher.detach(), self.gamma, self.order)
        return {"cc": (c_teacher - c_student).pow(2).sum() / batch**2}


@register_loss("csd")
class CSDLoss(DistillLoss):
    """Cross-sample similarity distillation (authors' baseline, §4.6).

    ``ŝ, t̂`` L2-normalised; ``L = MSE(t̂ ŝᵀ, sg[t̂ t̂ᵀ])`` over all B² entries: the
    teacher–student cosine matrix is matched to the teacher's. With ``csd_use_kd`` the MSE is
    replaced by KD (rows as logits, temperature ``kd_temperature``). The TT matrix is always
    detached (the reference's ``detach`` option; the teacher is frozen here anyway).

    Source: the DistilVPR authors' ``csd`` baseline (decompiled, docs/METHOD.md §4.6); the paper it
    stands for is not identified in the spec [UNVERIFIED].
    """

    def __init__(self, use_kd: bool = False, temperature: float = 1.0):
        super().__init__()
        self.use_kd = bool(use_kd)
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "CSDLoss":
        return cls(cfg.csd_use_kd, cfg.kd_temperature)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "csd")
        self._wanted(terms)
        s_hat = relations.l2_normalize(student)
        t_hat = relations.l2_normalize(teacher.detach())
        cross = t_hat @ s_hat.T
        target = t_hat @ t_hat.T
        if self.use_kd:
            return {"csd": kd_kl(cross, target, self.temperature)}
        return {"csd": F.mse_loss(cross, target)}


@register_loss("afd")
class AFDLoss(DistillLoss):
    """Attention-weighted feature distance (authors' baseline "afd", §4.6).

    ``att = softmax_j(s tᵀ)`` on the raw embeddings (rows); ``L = (1/B) Σ_i Σ_j att_ij M_ij``.
    Default (``afd_faithful_index_mismatch=False``): consistent indexing
    ``M_ij = ‖ŝ_i − t̂_j‖`` (L2-normalised inputs), i.e. the attention of student i on teacher
    j weights the distance between the same two samples. ``True`` reproduces the reference's
    mismatch ``M_ij = ‖ŝ_j − t̂_i‖`` (attention indexed (s_i, t_j), distance (t_i, s_j)).

    Source: the DistilVPR authors' ``afd`` baseline (decompiled, docs/METHOD.md §4.6), an embedding-level
    simplification of attention-based feature distillation (Ji, Heo, Park, "Show, Attend and
    Distill: Knowledge Distillation via Attention-based Feature Matching", AAAI 2021).
    """

    def __init__(self, faithful_index_mismatch: bool = False):
        super().__init__()
        self.faithful_index_mismatch = bool(faithful_index_mismatch)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "AFDLoss":
        return cls(cfg.afd_faithful_index_mismatch)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "afd")
        self._wanted(terms)
        teacher = teacher.detach()
        attention = F.softmax(student @ teacher.T, dim=1)
        s_hat, t_hat = relations.l2_normalize(student), relations.l2_normalize(teacher)
        distance = relations.euclidean_distance_matrix(s_hat, t_hat)  # [i, j] = ‖ŝ_i − t̂_j‖
        if self.faithful_index_mismatch:
            distance = distance.T  # [i, j] = ‖ŝ_j − t̂_i‖
        return {"afd": (attention * distance).sum(dim=1).mean()}


EPCNET_LOSS_TYPES: tuple[str, ...] = ("mse", "l1", "smoothl1", "kldiv")


@register_loss("epcnet")
class EPCNetLoss(DistillLoss):
    """Direct feature regression (EPC-Net's distillation): ``loss(norm(s), sg[norm(t)])``.

    ``norm`` = ``epcnet_norm_fn`` (l2 | softmax | log_softmax | identity); ``loss`` =
    ``epcnet_loss_type``: mse (mean over B·D, default), l1, smoothl1, or kldiv
    (``F.kl_div(norm(s), norm(t), reduction="batchmean")``, meant for ``log_softmax``).

    Hui et al., "Efficient 3D Point Cloud Feature Learning for Large-Scale Place Recognition"
    (EPC-Net), IEEE TIP 2022.
    """

    def __init__(self, loss_type: str = "mse", norm_fn: str = "l2"):
        super().__init__()
        if loss_type not in EPCNET_LOSS_TYPES:
            raise KeyError(f"unknown epcnet loss type {loss_type!r}; known: {list(EPCNET_LOSS_TYPES)}")
        if norm_fn not in relations.NORM_FNS:
            raise KeyError(f"unknown norm_fn {norm_fn!r}; known: {list(relations.NORM_FNS)}")
        self.loss_type = loss_type
        self.norm_fn = norm_fn

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "EPCNetLoss":
        return cls(cfg.epcnet_loss_type, cfg.epcnet_norm_fn)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "epcnet")
        self._wanted(terms)
        s_in, t_in = relations.normalize_pair(student, teacher.detach(), self.norm_fn)
        if self.loss_type == "kldiv":
            return {"epcnet": F.kl_div(s_in, t_in, reduction="batchmean")}
        return {"epcnet": pointwise_loss(s_in, t_in, self.loss_type)}


def _pair_differences(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    rows, cols = torch.nonzero(mask, as_tuple=True)
    return x[cols] - x[rows]  # (n_pairs, D): x_j - x_i for every (i, j) with mask[i, j]


@register_loss("lsdnet")
class LSDNetLoss(DistillLoss):
    """LSDNet-style structure distillation with positives/negatives masks (authors' baseline).

    On L2-normalised embeddings with Euclidean matrices SS, TT (B, B):

    * ``lsdnet_positive`` = loss(SS[P], sg TT[P]) over the positive pairs (i, j), P_ij;
    * ``lsdnet_negative`` = loss(SS[N], sg TT[N]) over the negative pairs;
    * ``lsdnet_difference`` = loss(Δ_S[P] Δ_S[N]ᵀ, sg Δ_T[P] Δ_T[N]ᵀ), Δ_X[P] the difference
      vectors ``x_j − x_i`` of the positive pairs (n_P, D) (likewise for negatives): inner
      products between positive and negative difference vectors, (n_P, n_N).

    Ordered pairs (both (i, j) and (j, i)) are used as the masks give them; a term with no
    pairs is 0. ``loss`` = ``lsdnet_loss_type`` (mse | l1 | smoothl1). Group weight
    ``lsdnet`` × internal weights (1, 1, 1).

    Source: the DistilVPR authors' ``lsdnet`` baseline (decompiled, docs/METHOD.md §4.6); likely
    "LSDNet: A Lightweight Self-Attentional Distillation Network for Visual Place Recognition",
    IROS 2022 [citation UNVERIFIED].
    """

    components: ClassVar[tuple[str, ...]] = ("positive", "negative", "difference")
    grouped: ClassVar[bool] = True
    requires_masks: ClassVar[bool] = True

    def __init__(self, loss_type: str = "mse"):
        super().__init__()
        if loss_type not in ("mse", "l1", "smoothl1"):
            raise KeyError(f"unknown lsdnet loss type {loss_type!r}; known: ['l1', 'mse', 'smoothl1']")
        self.loss_type = loss_type

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "LSDNetLoss":
        return cls(cfg.lsdnet_loss_type)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "lsdnet")
        positives, negatives = check_masks(positives_mask, negatives_mask, student.shape[0], "lsdnet")
        wanted = self._wanted(terms)
        s_hat = relations.l2_normalize(student)
        t_hat = relations.l2_normalize(teacher.detach())
        zero = student.sum() * 0.0
        out: dict[str, torch.Tensor] = {}
        if wanted & {"lsdnet_positive", "lsdnet_negative"}:
            ss = relations.euclidean_distance_matrix(s_hat)
            tt = relations.euclidean_distance_matrix(t_hat)
            for term, mask in (("lsdnet_positive", positives), ("lsdnet_negative", negatives)):
                if term in wanted:
                    out[term] = pointwise_loss(ss[mask], tt[mask], self.loss_type) if mask.any() else zero
        if "lsdnet_difference" in wanted:
            if positives.any() and negatives.any():
                rel_s = _pair_differences(s_hat, positives) @ _pair_differences(s_hat, negatives).T
                rel_t = _pair_differences(t_hat, positives) @ _pair_differences(t_hat, negatives).T
                out["lsdnet_difference"] = pointwise_loss(rel_s, rel_t, self.loss_type)
            else:
                out["lsdnet_difference"] = zero
        return out


@register_loss("mkd")
class MKDLoss(DistillLoss):
    """Multi-level logit distillation, simplified (authors' baseline), P = softmax over D, T = 1.

    * ``mkd_kd``: KD (see :class:`KDLoss`);
    * ``mkd_class`` = Σ (P_tᵀP_t − P_sᵀP_s)² / C (D×D class correlation, C = D);
    * ``mkd_batch`` = Σ (P_t P_tᵀ − P_s P_sᵀ)² / B (B×B batch correlation).

    Group weight ``mkd`` × internal weights (1, 1, 1); the reference sums the three.

    Jin, Wang, Lin, "Multi-Level Logit Distillation", CVPR 2023.
    """

    components: ClassVar[tuple[str, ...]] = ("kd", "class", "batch")
    grouped: ClassVar[bool] = True

    def __init__(self, temperature: float = 1.0):
        super().__init__()
        self.temperature = float(temperature)

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "MKDLoss":
        return cls(cfg.kd_temperature)

    def forward(self, student, teacher, positives_mask=None, negatives_mask=None, *, terms=None):
        check_pair(student, teacher, "mkd")
        wanted = self._wanted(terms)
        teacher = teacher.detach()
        batch, classes = student.shape
        p_student = F.softmax(student / self.temperature, dim=1)
        p_teacher = F.softmax(teacher / self.temperature, dim=1)
        out: dict[str, torch.Tensor] = {}
        if "mkd_kd" in wanted:
            out["mkd_kd"] = kd_kl(student, teacher, self.temperature)
        if "mkd_class" in wanted:
            out["mkd_class"] = (p_teacher.T @ p_teacher - p_student.T @ p_student).pow(2).sum() / classes
        if "mkd_batch" in wanted:
            out["mkd_batch"] = (p_teacher @ p_teacher.T - p_student @ p_student.T).pow(2).sum() / batch
        return out
