"""The ring loss (Zheng, Pan, Savvides, CVPR 2018) that holds the student's embedding scale without a teacher:
hand-computed values, its gradient's direction, the objective's term and the option checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from distilvpr_lib.config import profile_config
from distilvpr_lib.engine.train.objectives import RING_TERM, StudentObjective, ring_problem
from distilvpr_lib.losses.ring import ring_loss


def test_ring_loss_by_hand() -> None:
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]])  # norms 5 and 1
    assert float(ring_loss(x, 2.0)) == pytest.approx(((5 - 2) ** 2 + (1 - 2) ** 2) / 2)  # 5
    assert float(ring_loss(x * 0 + torch.tensor([[0.6, 0.8]]), 1.0)) == pytest.approx(0.0)


def test_ring_loss_gradient_is_radial_and_by_hand() -> None:
    # d/dx_i mean_j (‖x_j‖ - R)² = 2 (‖x_i‖ - R) x_i / (B ‖x_i‖): along x_i, so it moves the scale only and
    # is orthogonal to the gradient of any loss of the normalised embedding (the normalised task's)
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0]], requires_grad=True)
    ring_loss(x, 2.0).backward()
    expected = torch.tensor([[2 * 3 * 3 / 5 / 2, 2 * 3 * 4 / 5 / 2], [0.0, 2 * (1 - 2) * 1 / 1 / 2]])
    assert torch.allclose(x.grad, expected)
    y = torch.randn(6, 5, requires_grad=True, generator=torch.Generator().manual_seed(0))
    (g_ring,) = torch.autograd.grad(ring_loss(y, 3.0), y)
    task = (torch.nn.functional.normalize(y, dim=1) @ torch.randn(5, 2, generator=torch.Generator().manual_seed(1)))
    (g_task,) = torch.autograd.grad(task.square().sum(), y)
    assert (g_ring * g_task).sum(dim=1).abs().max() < 1e-5


def test_ring_loss_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        ring_loss(torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="radius"):
        ring_loss(torch.ones(2, 2), 0.0)


def _batch(n: int) -> dict:
    labels = torch.arange(n) // 2
    same = labels[:, None] == labels[None, :]
    return {"positives_mask": same & ~torch.eye(n, dtype=torch.bool), "negatives_mask": ~same}


def test_student_objective_adds_the_weighted_ring_term() -> None:
    cfg = profile_config("smoke")
    train = dataclasses.replace(cfg.train, ring_weight=0.5, ring_radius=2.0, task_normalize=True)
    x = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    result = StudentObjective(train, None)({"embedding": x}, _batch(4))
    assert set(result.terms) == {"triplet", RING_TERM}
    expected = 0.5 * ((5 - 2) ** 2 + 1 + 1 + 0) / 4
    assert float(result.terms[RING_TERM].detach()) == pytest.approx(expected)
    assert float(result.total.detach()) == pytest.approx(float(result.terms["triplet"].detach()) + expected)
    assert f"grad_ratio/{RING_TERM}" in result.stats  # the diagnostics see it as every other term
    plain = StudentObjective(cfg.train, None)({"embedding": x}, _batch(4))
    assert set(plain.terms) == {"triplet"}  # weight 0 (the default): no term


@pytest.mark.parametrize("weight, radius, message", [
    (-1.0, 1.0, "ring_weight must be >= 0"), (1.0, 0.0, "ring_radius must be > 0"),
    (1.0, math.nan, "ring_radius must be > 0"), (math.inf, 1.0, "ring_weight must be >= 0")])
def test_ring_options_are_checked(weight: float, radius: float, message: str) -> None:
    assert message in ring_problem(weight, radius)
    train = dataclasses.replace(profile_config("smoke").train, ring_weight=weight, ring_radius=radius)
    with pytest.raises(ValueError, match=message):
        StudentObjective(train, None)
    assert ring_problem(0.0, 1.0) is None and ring_problem(2.0, 4.0) is None


def test_distill_refuses_a_bad_ring_option_before_writing(tmp_path) -> None:
    from distilvpr_lib.engine.runs.student_run import distill_student
    from distilvpr_lib.errors import OptionError

    cfg = profile_config("smoke")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, ring_weight=1.0, ring_radius=-2.0))
    out = tmp_path / "student"
    with pytest.raises(OptionError, match="ring_radius must be > 0"):
        distill_student(cfg, None, out, method="nokd")
    assert not out.exists()
