"""Ring loss: holds the embedding's scale near a radius, without a teacher.

``L_ring(x) = mean_i (‖x_i‖ − R)²`` over a (B, D) batch — Zheng, Pan, Savvides, "Ring loss: Convex Feature
Normalization for Face Recognition", CVPR 2018 (their ``λ/(2m) Σ_i (‖F(x_i)‖ − R)²``, with the ½ folded into
the weight and the radius fixed rather than learned).

Its gradient on ``x_i``, ``2(‖x_i‖ − R) x_i / (B ‖x_i‖)``, is radial: it changes each embedding's norm and
nothing else, so it is orthogonal to the gradient of any loss computed on L2-normalised embeddings (the study's
normalised task, ``train.task_normalize``). It is the study's control for the scale the distillation terms hold
(docs/study/LOG.md).
"""

from __future__ import annotations

import math

import torch


def ring_loss(embeddings: torch.Tensor, radius: float) -> torch.Tensor:
    """``mean_i (‖x_i‖ − radius)²``.

    Args:
        embeddings: (B, D).
        radius: R > 0, the norm the embeddings are pulled to.
    Returns:
        Scalar tensor (with the graph of ``embeddings``).
    Raises:
        ValueError: ``embeddings`` not (B, D), or ``radius`` not a finite positive number.
    """
    if embeddings.dim() != 2:
        raise ValueError(f"ring loss: expected (B, D) embeddings, got {tuple(embeddings.shape)}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"ring loss: radius must be a finite number > 0, got {radius}")
    return (embeddings.norm(dim=1) - float(radius)).square().mean()


__all__ = ["ring_loss"]
