"""Base class of the distillation losses and small shared helpers."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import DistillConfig

POINTWISE_LOSS_TYPES: tuple[str, ...] = ("mse", "l1", "smoothl1")


class DistillLoss(nn.Module):
    """A distillation loss between student (B, D) and teacher (B, D) embeddings.

    Subclasses set:

    * ``components``: suffixes of the terms returned; the term key is ``f"{name}_{suffix}"``,
      or ``name`` itself for the single suffix ``""``;
    * ``grouped``: ``True`` when the loss is switched on by one *group* weight (its ``name``,
      e.g. ``rkdg``) multiplied by per-term *internal* weights (``rkdg_distance``...);
      ``False`` when every term has its own weight (default 0);
    * ``requires_masks``: the forward needs ``positives_mask``/``negatives_mask``;
    * ``dimension_free``: the loss compares only each agent's own (B, B) relations, so student and teacher
      descriptors may differ in dimension (e.g. distilling a single teacher head); the others need (B, D) pairs.

    ``forward`` returns the UNWEIGHTED terms; :class:`~distilvpr_lib.losses.distiller.Distiller`
    applies the weights. The teacher is treated as a constant (callers pass it detached;
    every loss also detaches teacher-only quantities itself).
    """

    name: ClassVar[str] = ""
    components: ClassVar[tuple[str, ...]] = ("",)
    grouped: ClassVar[bool] = False
    requires_masks: ClassVar[bool] = False
    dimension_free: ClassVar[bool] = False

    @classmethod
    def from_config(cls, cfg: "DistillConfig") -> "DistillLoss":
        """Build from a :class:`~distilvpr_lib.config.DistillConfig` (override when options exist)."""
        return cls()

    @classmethod
    def term_names(cls) -> tuple[str, ...]:
        """Keys of the dict returned by ``forward``."""
        return tuple(cls.name if suffix == "" else f"{cls.name}_{suffix}" for suffix in cls.components)

    @classmethod
    def internal_weight_defaults(cls, cfg: "DistillConfig") -> dict[str, float]:
        """Default internal weights of a grouped loss (term name -> weight); 1 each unless overridden."""
        return {term: 1.0 for term in cls.term_names()}

    def _wanted(self, terms: Collection[str] | None) -> set[str]:
        names = set(self.term_names())
        if terms is None:
            return names
        unknown = set(terms) - names
        if unknown:
            raise KeyError(f"{self.name}: unknown terms {sorted(unknown)}; known: {sorted(names)}")
        return set(terms)

    def pair_terms(self, student: torch.Tensor, teacher: torch.Tensor, terms: Collection[str] | None,
                   components: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                   ) -> dict[str, torch.Tensor]:
        """The common body of the pairwise relational losses (RKD, RKD-G, RKD-G2).

        Checks the (B, D_s) / (B, D_t) pair (dimensions may differ), detaches the teacher and computes
        ``components[suffix](student, teacher)`` for every wanted term, in ``components`` order.
        """
        check_pair(student, teacher, self.name, same_dim=not self.dimension_free)
        wanted = self._wanted(terms)
        teacher = teacher.detach()
        out: dict[str, torch.Tensor] = {}
        for suffix, term in components.items():
            name = self.name if suffix == "" else f"{self.name}_{suffix}"
            if name in wanted:
                out[name] = term(student, teacher)
        return out

    def forward(  # noqa: D102 - documented in the class
        self,
        student: torch.Tensor,
        teacher: torch.Tensor,
        positives_mask: torch.Tensor | None = None,
        negatives_mask: torch.Tensor | None = None,
        *,
        terms: Collection[str] | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError


def check_pair(student: torch.Tensor, teacher: torch.Tensor, where: str, same_dim: bool = True) -> None:
    """Raise ``ValueError`` unless student and teacher are (B, D) with equal shapes (``same_dim=False``: (B, D)
    and (B, D'), for losses that compare each agent's own relations only)."""
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"{where}: expected (B, D) embeddings, got {tuple(student.shape)} and {tuple(teacher.shape)}")
    if (student.shape if same_dim else student.shape[:1]) != (teacher.shape if same_dim else teacher.shape[:1]):
        raise ValueError(
            f"{where}: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} shapes differ "
            "(the student dimension must equal the teacher's)"
        )


def check_masks(
    positives_mask: torch.Tensor | None, negatives_mask: torch.Tensor | None, batch: int, where: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate (B, B) boolean masks; raise ``ValueError`` naming ``where`` otherwise."""
    if positives_mask is None or negatives_mask is None:
        raise ValueError(f"{where}: needs positives_mask and negatives_mask (B, B)")
    for label, mask in (("positives_mask", positives_mask), ("negatives_mask", negatives_mask)):
        if mask.shape != (batch, batch):
            raise ValueError(f"{where}: {label} has shape {tuple(mask.shape)}, expected ({batch}, {batch})")
    return positives_mask.bool(), negatives_mask.bool()


def pointwise_loss(prediction: torch.Tensor, target: torch.Tensor, loss_type: str) -> torch.Tensor:
    """Mean element-wise loss: ``"mse"``, ``"l1"`` or ``"smoothl1"`` (β = 1)."""
    if loss_type == "mse":
        return F.mse_loss(prediction, target)
    if loss_type == "l1":
        return F.l1_loss(prediction, target)
    if loss_type == "smoothl1":
        return F.smooth_l1_loss(prediction, target, beta=1.0)
    raise KeyError(f"unknown loss type {loss_type!r}; known: {list(POINTWISE_LOSS_TYPES)}")


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD: ``T² · mean_b Σ_d KL(softmax(t_b/T) ‖ softmax(s_b/T))``. (B, C), (B, C) -> scalar."""
    log_p_student = F.log_softmax(student_logits / temperature, dim=1)
    p_teacher = F.softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=1)
    return kl.mean() * temperature**2
