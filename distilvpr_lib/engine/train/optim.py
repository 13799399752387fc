"""Optimiser and learning-rate schedule of the teacher and the student (docs/METHOD.md §5.1).

Adam with L2 weight decay over named parameter groups (the teacher's image branch at ``image_lr``
and cloud branch at ``cloud_lr``; every student parameter at ``image_lr``), and the learning-rate schedule of
``train.lr_schedule`` stepped once per epoch: ``MultiStepLR`` (``"step"``, the default and the reference) or
linear warm-up + cosine annealing (``"cosine"``, :func:`cosine_lr_factor`).
"""

from __future__ import annotations

import math

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from distilvpr_lib.config import TrainConfig


def teacher_parameter_groups(model: nn.Module, train_cfg: "TrainConfig") -> list[dict[str, Any]]:
    """Adam groups of the teacher: the image branch at ``image_lr``, the cloud branch at ``cloud_lr``.

    A parameter belongs to the image (cloud) branch when the first component of its name
    contains ``image`` (``cloud``). Parameters without gradient are left out (as the reference:
    unused heads get no update). Any other trainable parameter is an error, so nothing is
    silently trained at the wrong rate.
    """
    groups: dict[str, list[nn.Parameter]] = {"image": [], "cloud": []}
    unassigned: list[str] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        top = name.split(".", 1)[0].lower()
        if "image" in top or "img" in top:
            groups["image"].append(param)
        elif "cloud" in top or "pc" == top or "point" in top:
            groups["cloud"].append(param)
        else:
            unassigned.append(name)
    if unassigned:
        raise ValueError(f"teacher parameters in neither the image nor the cloud branch: {unassigned[:5]}")
    return [
        {"params": groups["image"], "lr": train_cfg.image_lr, "name": "image"},
        {"params": groups["cloud"], "lr": train_cfg.cloud_lr, "name": "cloud"},
    ]


def student_parameter_groups(model: nn.Module, train_cfg: "TrainConfig") -> list[dict[str, Any]]:
    """One Adam group: every trainable student parameter at ``image_lr``."""
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": train_cfg.image_lr,
             "name": "student"}]


def build_optimizer(groups: list[dict[str, Any]], train_cfg: "TrainConfig") -> torch.optim.Adam:
    """Adam (L2 ``weight_decay``, not AdamW) over the given parameter groups (empty groups dropped).

    The update runs as one multi-tensor (``foreach``) step over all parameters of a group rather than
    torch's per-parameter loop, which it picks on the CPU by default: the same element-wise operations in the
    same order, so the weights are bit-identical (tests/test_cpu_kernels.py) with less per-tensor overhead
    (the update of the student alone 2.4x faster in a micro-benchmark; the update is ~3 % of a study step,
    benchmarks/README.md "Stage profile (issue 26)"). ``train_cfg.fused_adam`` uses torch's fused Adam kernel
    instead: about twice as fast again, but its rounding differs from the loop's in the last bits.

    A resumed run keeps the implementation recorded in its checkpoint (``Optimizer.load_state_dict`` restores
    the group options), so its remaining steps round as its first ones did.
    """
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    implementation = {"fused": True} if train_cfg.fused_adam else {"foreach": True}
    return torch.optim.Adam(groups, weight_decay=train_cfg.weight_decay, **implementation)


def cosine_lr_factor(epoch_index: int, epochs: int, warmup_epochs: int = 0) -> float:
    """The factor on every group's base rate during the epoch of 0-based index ``epoch_index`` (= the
    scheduler's ``last_epoch``; epoch ``epoch_index + 1`` of the run) under the ``"cosine"`` schedule.

    Warm-up (``k < W``): ``(k + 1) / (W + 1)``, a linear ramp that ends one step below the full rate; then
    ``(1 + cos(pi (k - W) / (E - W))) / 2``: the full rate at the first epoch after the warm-up, 0 at
    ``k = E`` (one epoch after the last, so every trained epoch has a positive rate). E.g. ``E = 4, W = 1``:
    0.5, 1, 0.75, 0.25.

    Args:
        epoch_index: ``k`` >= 0.
        epochs: ``E`` = ``train.epochs``.
        warmup_epochs: ``W`` = ``train.warmup_epochs``, ``0 <= W < E``.
    """
    k, total, warmup = int(epoch_index), int(epochs), int(warmup_epochs)
    if k < warmup:
        return (k + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(k - warmup, total - warmup) / (total - warmup)))


def build_scheduler(optimizer: torch.optim.Optimizer,
                    train_cfg: "TrainConfig") -> torch.optim.lr_scheduler.LRScheduler:
    """The schedule of ``train_cfg.lr_schedule``, stepped once per epoch by the trainer.

    * ``"step"``: ``MultiStepLR(milestones, gamma)`` (the reference; unchanged);
    * ``"cosine"``: ``LambdaLR`` with :func:`cosine_lr_factor` over ``train_cfg.epochs`` and
      ``train_cfg.warmup_epochs``. The factor is a plain function of the config, so the scheduler's
      ``state_dict`` (in ``checkpoints/last.pt``) holds only its position (``last_epoch``) and base rates; a
      resumed run recomputes the same factors from the same config (a cosine run resumes only with its own
      ``epochs``: ``engine.runs.run_folder.resume_differences``).

    Raises:
        ValueError: an unknown schedule (the config checks refuse it first, naming ``train.lr_schedule``).
    """
    schedule = getattr(train_cfg, "lr_schedule", "step")
    if schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(train_cfg.milestones),
                                                    gamma=train_cfg.gamma)
    if schedule == "cosine":
        epochs, warmup = int(train_cfg.epochs), int(train_cfg.warmup_epochs)

        def factor(epoch_index: int) -> float:
            return cosine_lr_factor(epoch_index, epochs, warmup)

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    raise ValueError(f"train.lr_schedule: unknown schedule {schedule!r} (step or cosine)")


__all__ = ["build_optimizer", "build_scheduler", "cosine_lr_factor", "student_parameter_groups",
           "teacher_parameter_groups"]
