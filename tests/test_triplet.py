"""Batch-hard triplet loss against hand computations (docs/METHOD.md §4.1)."""

from __future__ import annotations

import math

import pytest
import torch

from distilvpr_lib.losses.triplet import BatchHardTripletLoss, mine_batch_hard, teacher_task_loss


def _masks(labels, neutral=()):
    labels = torch.as_tensor(labels)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool)
    positives = same & ~eye
    negatives = ~same
    for i, j in neutral:  # neither positive nor negative
        negatives[i, j] = negatives[j, i] = False
    return positives, negatives


# x0 = (0,0), x1 = (1,0) share a place; x2 = (0,0.5), x3 = (3,0) share another.
POINTS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 0.5], [3.0, 0.0]], dtype=torch.float64)
LABELS = [0, 0, 1, 1]


def test_mining_picks_hardest_positive_and_negative():
    positives, negatives = _masks(LABELS)
    (a, p, n), dist = mine_batch_hard(POINTS, positives, negatives)
    assert a.tolist() == [0, 1, 2, 3]
    assert p.tolist() == [1, 0, 3, 2]
    # anchor 0: negatives at 0.5 (x2) and 3 (x3) -> x2; anchor 1: 1.118 (x2), 2 (x3) -> x2
    # anchor 2: 0.5 (x0), 1.118 (x1) -> x0; anchor 3: 3 (x0), 2 (x1) -> x1
    assert n.tolist() == [2, 2, 0, 1]
    assert dist[0, 2].item() == pytest.approx(0.5)


def test_hand_built_example_with_swap():
    positives, negatives = _masks(LABELS)
    x = POINTS.clone().requires_grad_(True)
    loss, stats = BatchHardTripletLoss(margin=0.2)(x, positives, negatives)
    d23 = math.sqrt(9 + 0.25)
    d12 = math.sqrt(1 + 0.25)
    # ℓ_a = max(0, d(a,p) − min(d(a,n), d(p,n)) + 0.2)
    l0 = 1.0 - min(0.5, d12) + 0.2  # = 0.7 (no swap needed)
    l1 = 1.0 - min(d12, 0.5) + 0.2  # swap: d(p=x0, n=x2) = 0.5 < d(x1, x2) -> 0.7 (0.082 without swap)
    l2 = d23 - min(0.5, 3.0) + 0.2
    l3 = d23 - min(2.0, d12) + 0.2  # swap: d(p=x2, n=x1) = 1.118 < 2
    assert loss.item() == pytest.approx((l0 + l1 + l2 + l3) / 4, rel=1e-9)
    assert stats["num_triplets"] == 4
    assert stats["active_fraction"] == 1.0
    assert stats["mean_pos_dist"] == pytest.approx((1 + 1 + d23 + d23) / 4)
    assert stats["mean_neg_dist"] == pytest.approx((0.5 + d12 + 0.5 + 2.0) / 4)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_avg_nonzero_reducer_divides_by_active_triplets_only():
    # two well-separated pairs except that anchor 0 is violated: only some triplets active
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [0.25, 0.0], [5.0, 0.0], [5.1, 0.0], [9.0, 0.0]], dtype=torch.float64)
    labels = [0, 0, 1, 2, 2, 3]
    positives, negatives = _masks(labels)
    loss, stats = BatchHardTripletLoss(0.2)(x, positives, negatives)
    # anchors with a positive: 0, 1, 3, 4
    # a=0: p=1 (0.1), n=2 (0.25), pn=0.15 -> 0.1 − 0.15 + 0.2 = 0.15
    # a=1: p=0 (0.1), n=2 (0.15), pn=d(0,2)=0.25 -> 0.1 − 0.15 + 0.2 = 0.15
    # a=3: p=4 (0.1), n=2 (4.75) -> 0 ; a=4: p=3, n=2 (4.85) -> 0
    assert stats["num_triplets"] == 4
    assert stats["active_fraction"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx((0.15 + 0.15) / 2, rel=1e-9)


def test_all_satisfied_gives_zero_loss():
    x = torch.tensor([[0.0, 0.0], [0.05, 0.0], [5.0, 0.0], [5.05, 0.0]], dtype=torch.float64, requires_grad=True)
    positives, negatives = _masks(LABELS)
    loss, stats = BatchHardTripletLoss(0.2)(x, positives, negatives)
    assert loss.item() == 0.0
    assert stats["active_fraction"] == 0.0
    loss.backward()
    assert torch.count_nonzero(x.grad) == 0


def test_anchors_without_positive_or_negative_are_dropped():
    x = torch.randn(5, 3, dtype=torch.float64)
    labels = [0, 0, 1, 2, 3]  # anchors 2, 3, 4 have no positive
    positives, negatives = _masks(labels)
    _, stats = BatchHardTripletLoss()(x, positives, negatives)
    assert stats["num_triplets"] == 2
    # neutral pairs: anchor 1 has no negative left -> dropped
    positives, negatives = _masks([0, 0, 1], neutral=[(1, 2)])
    (a, _, _), _ = mine_batch_hard(torch.randn(3, 2), positives, negatives)
    assert a.tolist() == [0]


def test_no_valid_anchor_gives_zero_with_graph():
    x = torch.randn(3, 4, requires_grad=True)
    positives = torch.zeros(3, 3, dtype=torch.bool)
    negatives = ~torch.eye(3, dtype=torch.bool)
    loss, stats = BatchHardTripletLoss()(x, positives, negatives)
    assert loss.item() == 0.0 and stats["num_triplets"] == 0
    loss.backward()
    assert x.grad is not None


def test_bad_mask_shape_raises():
    with pytest.raises(ValueError, match="positives_mask"):
        BatchHardTripletLoss()(torch.zeros(4, 2), torch.zeros(3, 3, dtype=torch.bool), torch.zeros(4, 4, dtype=torch.bool))


def test_teacher_task_loss_weights_and_omits_zero_weight_heads():
    positives, negatives = _masks(LABELS)
    outputs = {
        "embedding": POINTS,
        "cloud_embedding": POINTS * 2,
        "image_embedding": POINTS * 3,
    }
    terms, stats = teacher_task_loss(outputs, (positives, negatives), weights=(0.5, 0.5, 0.0))
    assert set(terms) == {"triplet_embedding", "triplet_cloud_embedding"}
    single, _ = BatchHardTripletLoss()(POINTS, positives, negatives)
    doubled, _ = BatchHardTripletLoss()(POINTS * 2, positives, negatives)
    assert terms["triplet_embedding"].item() == pytest.approx(0.5 * single.item())
    assert terms["triplet_cloud_embedding"].item() == pytest.approx(0.5 * doubled.item())
    assert "embedding/active_fraction" in stats and "image_embedding/active_fraction" not in stats
    # a head missing from the outputs is skipped
    terms, _ = teacher_task_loss({"embedding": POINTS}, (positives, negatives))
    assert set(terms) == {"triplet_embedding"}
    with pytest.raises(ValueError, match="weights"):
        teacher_task_loss(outputs, (positives, negatives), weights=(1.0,))
