"""The image-only student (``GeneralImageFE``, docs/METHOD.md §3.2): ResNet to layer3 -> 1x1 conv -> GeM (384-d)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import Tensor

from ..config import ModelConfig
from .image import ImageBranch, load_image_backbone_weights, resolve_image_weights
from .teacher import teacher_output_dim


class ImageStudent(ImageBranch):
    """Image student; same layers and parameter names as :class:`ImageBranch` (``model``, ``conv1x1``, ``image_gem``)."""

    def forward(self, batch: Mapping[str, Any] | Tensor) -> dict[str, Tensor]:  # type: ignore[override]
        """``batch["images"]`` (B, 3, H, W) (or the image tensor itself) -> dict ``embedding`` (B, student_dim)
        plus the ``image_layer{1,2,3}`` feature maps."""
        images = batch["images"] if isinstance(batch, Mapping) else batch
        return super().forward(images.to(self.conv1x1.weight.device))


def build_student(model_cfg: ModelConfig) -> ImageStudent:
    """Build the student; its dimension must equal the teacher's (the cross-agent losses compare them directly).

    Raises:
        ValueError: ``student_dim != cloud_dim + image_dim``.
        KeyError: unknown backbone.
        FileNotFoundError: ``pretrained_image_weights`` names a missing file.
    """
    teacher_dim = teacher_output_dim(model_cfg)
    if model_cfg.student_dim != teacher_dim:
        raise ValueError(
            f"student_dim={model_cfg.student_dim} must equal the teacher dimension cloud_dim + image_dim = "
            f"{model_cfg.cloud_dim} + {model_cfg.image_dim} = {teacher_dim}"
        )
    student = ImageStudent(model_cfg.student_backbone, out_dim=model_cfg.student_dim, gem_p=model_cfg.gem_p)
    weights = resolve_image_weights(model_cfg.pretrained_image_weights, model_cfg.student_backbone)
    if weights is not None:
        load_image_backbone_weights(student, weights)
    return student
