"""Task loss: batch-hard triplet with masks (MinkLoc++ ``BatchHardTripletLossWithMasks``, docs/METHOD.md §4.1).

1. Mining on DETACHED embeddings, Euclidean distances ``D_ab = ‖x_a − x_b‖`` (no normalisation):
   hardest positive ``p(a) = argmax_b D_ab·P_ab`` (non-positives set to 0), hardest negative
   ``n(a) = argmin_b D_ab`` over ``N_ab`` (non-negatives set to +∞); anchors are kept only if
   they have ≥ 1 positive and ≥ 1 negative.
2. Loss (with gradient) by pytorch-metric-learning's ``TripletMarginLoss(margin, swap=True)``
   with un-normalised ``LpDistance`` on the explicit (anchor, positive, negative) tuples:
   ``ℓ_a = max(0, ‖x_a − x_p‖ − min(‖x_a − x_n‖, ‖x_p − x_n‖) + margin)``, reduced by
   ``AvgNonZeroReducer``: ``Σ ℓ_a / #{ℓ_a > 0}`` (0 when no triplet is active).

Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person Re-Identification", 2017;
Komorowski, Wysoczanska, Trzcinski, "MinkLoc++", IJCNN 2021.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer
from torch import nn

#: Output keys of the teacher, in the order of ``TrainConfig.teacher_loss_weights``.
TEACHER_HEADS: tuple[str, ...] = ("embedding", "cloud_embedding", "image_embedding")


def mine_batch_hard(
    embeddings: torch.Tensor, positives_mask: torch.Tensor, negatives_mask: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Hardest positive / negative per anchor on detached Euclidean distances.

    Args:
        embeddings: (B, D).
        positives_mask, negatives_mask: (B, B) bool.
    Returns:
        ``((anchors, positives, negatives), distances)``: three (K,) index tensors over the
        K kept anchors, and the detached (B, B) distance matrix.
    """
    with torch.no_grad():
        distances = torch.cdist(embeddings.detach(), embeddings.detach(), p=2)
        positives_mask = positives_mask.bool()
        negatives_mask = negatives_mask.bool()
        hardest_positive = (distances * positives_mask).argmax(dim=1)
        hardest_negative = distances.masked_fill(~negatives_mask, float("inf")).argmin(dim=1)
        keep = positives_mask.any(dim=1) & negatives_mask.any(dim=1)
        anchors = torch.nonzero(keep, as_tuple=True)[0]
    return (anchors, hardest_positive[anchors], hardest_negative[anchors]), distances


class BatchHardTripletLoss(nn.Module):
    """Batch-hard triplet loss with masks (see the module docstring for the formula).

    ``forward(embeddings (B, D), positives_mask (B, B), negatives_mask (B, B))`` returns
    ``(loss scalar, stats)`` with stats ``num_triplets`` (kept anchors), ``active_fraction``
    (fraction with ℓ > 0), ``mean_pos_dist``, ``mean_neg_dist`` (anchor–positive and
    anchor–negative distances of the mined triplets), ``max_pos_dist``, ``min_neg_dist``.
    """

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = float(margin)
        self.loss_fn = TripletMarginLoss(
            margin=self.margin,
            swap=True,
            distance=LpDistance(normalize_embeddings=False, p=2, power=1),
            reducer=AvgNonZeroReducer(),
        )

    def forward(
        self, embeddings: torch.Tensor, positives_mask: torch.Tensor, negatives_mask: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        batch = embeddings.shape[0]
        if embeddings.dim() != 2:
            raise ValueError(f"BatchHardTripletLoss: expected (B, D) embeddings, got {tuple(embeddings.shape)}")
        for label, mask in (("positives_mask", positives_mask), ("negatives_mask", negatives_mask)):
            if mask.shape != (batch, batch):
                raise ValueError(f"BatchHardTripletLoss: {label} has shape {tuple(mask.shape)}, expected ({batch}, {batch})")
        (anchors, positives, negatives), distances = mine_batch_hard(embeddings, positives_mask, negatives_mask)
        num = int(anchors.numel())
        if num == 0:
            zero = embeddings.sum() * 0.0
            return zero, {
                "num_triplets": 0.0, "active_fraction": 0.0, "mean_pos_dist": 0.0,
                "mean_neg_dist": 0.0, "max_pos_dist": 0.0, "min_neg_dist": 0.0,
            }
        loss = self.loss_fn(embeddings, None, (anchors, positives, negatives))
        with torch.no_grad():
            d_ap = distances[anchors, positives]
            d_an = distances[anchors, negatives]
            d_pn = distances[positives, negatives]
            per_triplet = (d_ap - torch.minimum(d_an, d_pn) + self.margin).clamp_min(0.0)
        stats = {
            "num_triplets": float(num),
            "active_fraction": float((per_triplet > 0).float().mean()),
            "mean_pos_dist": float(d_ap.mean()),
            "mean_neg_dist": float(d_an.mean()),
            "max_pos_dist": float(d_ap.max()),
            "min_neg_dist": float(d_an.min()),
        }
        return loss, stats


def teacher_task_loss(
    outputs: Mapping[str, torch.Tensor],
    masks: tuple[torch.Tensor, torch.Tensor],
    weights: Sequence[float] = (0.5, 0.5, 0.0),
    margin: float = 0.2,
    loss_fn: BatchHardTripletLoss | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """MinkLoc++ multi-head task loss: weighted batch-hard triplets on (fused, cloud, image).

    Args:
        outputs: teacher outputs with any of ``embedding`` (B, Dc+Di), ``cloud_embedding``
            (B, Dc), ``image_embedding`` (B, Di); a head absent from ``outputs`` is skipped.
        masks: ``(positives_mask, negatives_mask)``, each (B, B) bool.
        weights: per head, in the order of ``TEACHER_HEADS`` (reference 0.5/0.5/0).
    Returns:
        ``(terms, stats)``: WEIGHTED terms ``triplet_<head>`` (heads with weight 0 are
        omitted — the reference computes the image triplet but multiplies it by 0), and
        stats ``<head>/<stat>`` for every computed head.
    """
    if len(weights) != len(TEACHER_HEADS):
        raise ValueError(f"teacher_task_loss: expected {len(TEACHER_HEADS)} weights {TEACHER_HEADS}, got {list(weights)}")
    loss_fn = loss_fn if loss_fn is not None else BatchHardTripletLoss(margin)
    positives_mask, negatives_mask = masks
    terms: dict[str, torch.Tensor] = {}
    stats: dict[str, float] = {}
    for head, weight in zip(TEACHER_HEADS, weights):
        if head not in outputs or float(weight) == 0.0:
            continue
        loss, head_stats = loss_fn(outputs[head], positives_mask, negatives_mask)
        terms[f"triplet_{head}"] = float(weight) * loss
        stats.update({f"{head}/{name}": value for name, value in head_stats.items()})
    return terms, stats
