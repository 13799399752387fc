"""Training objectives: a model's outputs on a batch -> the total loss, its weighted named terms
and statistics (docs/METHOD.md §4.1, §4.5).

* :class:`TeacherObjective`: ``w0·triplet(fused) + w1·triplet(cloud) [+ w2·triplet(image)]``;
* :class:`StudentObjective`: ``student_task_weight·triplet(s)`` plus the Distiller's weighted terms
  against cached teacher embeddings.

Both return a :class:`LossOutput`; any callable with the :class:`Objective` signature can drive
the loop (:class:`~distilvpr_lib.engine.train.loop.Trainer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import TrainConfig


class TeacherLookup(Protocol):
    """What the student objective needs of a teacher cache (``engine.runs.teacher_cache.TeacherCache``)."""

    def lookup(self, rel_paths: Sequence[str], device: torch.device | str | None = None) -> torch.Tensor:
        """(B, D) teacher embeddings of a batch's B sub-map paths, on ``device``."""
        ...

#: Name of the student's task term.
STUDENT_TASK_TERM: str = "triplet"
#: Name of the student's ring term (``train.ring_weight`` > 0).
RING_TERM: str = "ring"


@dataclass
class LossOutput:
    """What an objective returns for one batch.

    Attributes:
        total: scalar tensor to back-propagate (= sum of ``terms``).
        terms: weighted named terms (scalar tensors), e.g. ``triplet_embedding``, ``rkdg_distance``.
        stats: floats to log, e.g. ``active_fraction``, ``student_norm_mean``; keys ending in
            ``_max`` are aggregated over an epoch by max, the others by mean.
    """

    total: torch.Tensor
    terms: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)


class Objective(Protocol):
    """``objective(outputs, batch) -> LossOutput``; ``outputs`` is the model's output dict."""

    kind: str

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput: ...


def _norm_stats(prefix: str, embeddings: torch.Tensor) -> dict[str, float]:
    norms = embeddings.detach().float().norm(dim=1)
    return {f"{prefix}_norm_mean": float(norms.mean()), f"{prefix}_norm_max": float(norms.max())}


def _sum_terms(terms: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    total = like.new_zeros(())
    for value in terms.values():
        total = total + value
    return total


def _make_triplet(margin: float) -> nn.Module:
    from distilvpr_lib.losses.triplet import BatchHardTripletLoss

    return BatchHardTripletLoss(margin=margin)


class TeacherObjective:
    """``Σ_h w_h · triplet(outputs[h])`` over the teacher's heads (fused, cloud, image), docs/METHOD.md §4.1.

    Delegates to :func:`distilvpr_lib.losses.triplet.teacher_task_loss`: heads with weight 0 are
    not computed (the reference computed the image head and multiplied it by 0). Term names:
    ``triplet_embedding`` (fused), ``triplet_cloud_embedding``, ``triplet_image_embedding``.
    Stats: ``active_fraction`` / ``num_triplets`` of the fused head, every head's triplet stats as
    ``<head>/<stat>``, and the fused norms as ``teacher_norm_{mean,max}``.
    """

    kind = "teacher"

    def __init__(self, train_cfg: "TrainConfig", triplet: nn.Module | None = None) -> None:
        self.weights = tuple(float(w) for w in train_cfg.teacher_loss_weights)
        if len(self.weights) != 3:
            raise ValueError(f"train.teacher_loss_weights needs 3 weights (fused, cloud, image), got {self.weights}")
        if not any(self.weights):
            raise ValueError("train.teacher_loss_weights are all zero: nothing to train")
        self.margin = float(train_cfg.margin)
        self.triplet = triplet if triplet is not None else _make_triplet(train_cfg.margin)

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput:
        from distilvpr_lib.losses.triplet import teacher_task_loss

        outputs32 = {k: v.float() for k, v in outputs.items() if torch.is_tensor(v)}
        terms, head_stats = teacher_task_loss(
            outputs32, (batch["positives_mask"], batch["negatives_mask"]), weights=self.weights,
            margin=self.margin, loss_fn=self.triplet)
        if not terms:
            raise ValueError(f"teacher objective: no head with a non-zero weight among outputs {sorted(outputs)}")
        stats = {k: float(v) for k, v in head_stats.items()}
        for name in ("active_fraction", "num_triplets"):
            if f"embedding/{name}" in head_stats:
                stats[name] = float(head_stats[f"embedding/{name}"])
        stats.update(_norm_stats("teacher", outputs32["embedding"]))
        return LossOutput(_sum_terms(terms, outputs32["embedding"]), terms, stats)


def distill_window_problem(from_epoch: int, until_epoch: int) -> str | None:
    """What is wrong with the epoch window ``distill.from_epoch`` .. ``distill.until_epoch``, or ``None``.

    ``until_epoch`` = 0 means "to the last epoch"; both are 1-based and inclusive.
    """
    if int(until_epoch) < 0:
        return f"distill.until_epoch must be >= 0 (0 = distil to the last epoch), got {until_epoch}"
    if int(from_epoch) < 1:
        return f"distill.from_epoch must be >= 1 (1 = distil from the start), got {from_epoch}"
    if int(until_epoch) > 0 and int(from_epoch) > int(until_epoch):
        return f"distill.from_epoch {from_epoch} is after until_epoch {until_epoch}: no epoch would distil"
    return None


def ring_problem(weight: float, radius: float) -> str | None:
    """What is wrong with ``train.ring_weight`` / ``train.ring_radius``, or ``None``."""
    if not (math.isfinite(float(weight)) and float(weight) >= 0):
        return f"train.ring_weight must be >= 0 and finite (0 = no ring term), got {weight}"
    if not (math.isfinite(float(radius)) and float(radius) > 0):
        return f"train.ring_radius must be > 0 and finite, got {radius}"
    return None


class StudentObjective:
    """``student_task_weight · triplet(s)`` [+ ``ring_weight · ring(s)``] + the Distiller's weighted named terms
    (docs/METHOD.md §4.5).

    The teacher embeddings ``t`` come from a teacher cache (:class:`TeacherLookup`), looked up by the batch's
    ``rel_paths``; the teacher never runs. With ``distiller=None`` (method ``nokd``) only the task
    term is used. ``train_cfg.task_normalize`` computes the task triplet on L2-normalised embeddings;
    ``train_cfg.ring_weight`` > 0 adds the term :data:`RING_TERM` (:func:`distilvpr_lib.losses.ring.ring_loss`
    on the raw embeddings, radius ``train_cfg.ring_radius``) in every epoch, distiller or not.
    Stats: ``active_fraction`` / ``num_triplets`` of the task triplet and
    ``{student,teacher}_norm_{mean,max}`` (raw norms; the self-agent hyperbolic term saturates
    for large raw norms, docs/METHOD.md §8.5). With ``train_cfg.loss_diagnostics`` also, per term,
    ``grad_norm/<term>`` = ‖∂term/∂s‖ (Frobenius norm over the (B, D) student embedding) and
    ``grad_ratio/<term>`` = that norm over the task term's, and ``hyperbolic_clamp_{student,teacher}``
    = the share of off-diagonal self-relation entries d_c(ToPoincare(x_i), ToPoincare(x_j)) at the artanh
    clamp (``distill_cfg.curvature``; only when a distiller is present).

    The distiller acts in epochs ``distill_from`` .. ``distill_until`` (1-based, inclusive;
    ``distill_until`` = 0: to the end; the trainer calls :meth:`set_epoch` at the start of every
    epoch): outside that window batches carry the task term only and the stat ``distill_active`` = 0
    (1 while the distiller acts).
    """

    kind = "student"

    def __init__(self, train_cfg: "TrainConfig", teacher_cache: TeacherLookup | None,
                 distiller: nn.Module | None = None, triplet: nn.Module | None = None,
                 curvature: float | None = None, distill_until: int = 0, distill_from: int = 1) -> None:
        problem = distill_window_problem(distill_from, distill_until) or ring_problem(
            train_cfg.ring_weight, train_cfg.ring_radius)
        if problem:
            raise ValueError(problem)
        self.distill_from, self.distill_until = int(distill_from), int(distill_until)
        self.distill_active = True
        self.task_weight = float(train_cfg.student_task_weight)
        self.task_normalize = bool(train_cfg.task_normalize)
        self.ring_weight = float(train_cfg.ring_weight)
        self.ring_radius = float(train_cfg.ring_radius)
        self.diagnostics = bool(train_cfg.loss_diagnostics)
        self.curvature = curvature
        self.triplet = triplet if triplet is not None else _make_triplet(train_cfg.margin)
        self.distiller = distiller
        self.teacher_cache = teacher_cache
        if distiller is not None and teacher_cache is None:
            raise ValueError("student objective: a distiller needs a teacher cache")

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before epoch ``epoch`` (1-based): the distiller acts iff the epoch is in its window."""
        epoch = int(epoch)
        self.distill_active = epoch >= self.distill_from and (self.distill_until == 0 or epoch <= self.distill_until)

    def __call__(self, outputs: Mapping[str, torch.Tensor], batch: Mapping[str, Any]) -> LossOutput:
        from distilvpr_lib.losses.relations import l2_normalize

        student = outputs["embedding"].float()
        positives, negatives = batch["positives_mask"], batch["negatives_mask"]
        task_input = l2_normalize(student) if self.task_normalize else student
        task, task_stats = self.triplet(task_input, positives, negatives)
        terms: dict[str, torch.Tensor] = {STUDENT_TASK_TERM: self.task_weight * task}
        if self.ring_weight > 0:
            from distilvpr_lib.losses.ring import ring_loss

            terms[RING_TERM] = self.ring_weight * ring_loss(student, self.ring_radius)
        stats = {k: float(v) for k, v in task_stats.items() if isinstance(v, (int, float))}
        stats.update(_norm_stats("student", student))
        teacher = None
        if self.teacher_cache is not None:
            teacher = self.teacher_cache.lookup(batch["rel_paths"], device=student.device)
            stats.update(_norm_stats("teacher", teacher))
            if self.distiller is not None:
                stats["distill_active"] = float(self.distill_active)
            if self.distiller is not None and self.distill_active:
                distill_terms = self.distiller(student, teacher, positives, negatives)
                for name, value in distill_terms.items():
                    if name in terms:
                        raise ValueError(f"distiller term {name!r} collides with the student's own term")
                    terms[name] = value
        if self.diagnostics and student.requires_grad:
            stats.update(term_gradient_norms(terms, student))
            if self.distiller is not None and teacher is not None and self.curvature is not None \
                    and self.distill_active:
                stats["hyperbolic_clamp_student"] = hyperbolic_clamp_share(student, self.curvature)
                stats["hyperbolic_clamp_teacher"] = hyperbolic_clamp_share(teacher, self.curvature)
        return LossOutput(_sum_terms(terms, student), terms, stats)


def term_gradient_norms(terms: Mapping[str, torch.Tensor], embedding: torch.Tensor) -> dict[str, float]:
    """How hard each loss term pulls on the embedding: ``‖∂term/∂embedding‖`` and its ratio to the task term's.

    Args:
        terms: weighted scalar terms (as in :class:`LossOutput`), one of them :data:`STUDENT_TASK_TERM`.
        embedding: the (B, D) tensor the terms were computed from (requires grad). The gradient stops at
            it, so the cost is that of the loss graph only, not of the network.

    Returns:
        ``grad_norm/<term>`` for every term and ``grad_ratio/<term>`` (norm / task term's norm) for every
        term other than the task term (``inf``-free: a zero task gradient gives no ratio).
    """
    out: dict[str, float] = {}
    for name, value in terms.items():
        if not value.requires_grad:
            out[f"grad_norm/{name}"] = 0.0
            continue
        (grad,) = torch.autograd.grad(value, embedding, retain_graph=True, allow_unused=True)
        out[f"grad_norm/{name}"] = 0.0 if grad is None else float(grad.detach().float().norm())
    task = out.get(f"grad_norm/{STUDENT_TASK_TERM}")
    if task:
        for name in terms:
            if name != STUDENT_TASK_TERM:
                out[f"grad_ratio/{name}"] = out[f"grad_norm/{name}"] / task
    return out


def hyperbolic_clamp_share(embeddings: torch.Tensor, curvature: float) -> float:
    """Share of off-diagonal entries of the self geodesic relation at the artanh clamp.

    ``d_c(ToPoincare(x_i), ToPoincare(x_j))`` is computed as in the self-agent term (docs/METHOD.md §4.3); an
    entry is *at the clamp* when ``√c·‖(−x_i) ⊕_c x_j‖ ≥ 1 − ARTANH_EPS``, i.e. the distance equals its
    saturation value ``(2/√c)·artanh(1 − ARTANH_EPS)`` and carries no relational information.

    Args:
        embeddings: (B, D) raw embeddings.
        curvature: ``c > 0``.
    """
    from distilvpr_lib.losses import hyperbolic
    from distilvpr_lib.losses.relations import hyperbolic_distance_matrix

    with torch.no_grad():
        batch = embeddings.shape[0]
        if batch < 2:
            return 0.0
        dist = hyperbolic_distance_matrix(embeddings.detach().double(), None, curvature)
        saturated = (2.0 / math.sqrt(curvature)) * math.atanh(1.0 - hyperbolic.ARTANH_EPS)
        off = ~torch.eye(batch, dtype=torch.bool, device=dist.device)
        return float((dist[off] >= saturated * (1.0 - 1e-9)).double().mean())


