"""The multi-modal teacher ``MinkLocMultimodal`` (MinkLoc++ ``minklocmmcat``, docs/METHOD.md §3.1).

cloud branch (MinkFPN + GeM, 128-d) ‖ image branch (ResNet18 to layer3 + 1x1 conv + GeM, 256-d), fused by
concatenation, cloud first (384-d). State-dict keys follow the authors' checkpoints
(``cloud_fe.backbone.*``, ``cloud_fe.pooling.pooling.p``, ``image_fe.model.*``, ``image_fe.conv1x1.*``,
``image_fe.image_gem.p``) so that :func:`load_reference_teacher_state_dict` can import them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from .image import ImageBranch, load_image_backbone_weights, resolve_image_weights
from .sparse import CloudBranch, get_sparse_backend

#: Key prefixes of the reference checkpoints that belong to parts we do not build (unused by the method).
REFERENCE_UNUSED_PREFIXES: tuple[str, ...] = (
    "image_fe.model.layer4.",
    "image_fe.model.fc.",
    "image_fe.imagecosplace.",
    "image_fe.imageconvap.",
    "image_fe.imagenetvlad.",
)


class MinkLocMultimodal(nn.Module):
    """Late-fusion LiDAR + RGB teacher.

    Args:
        cloud_fe: :class:`CloudBranch` producing (B, cloud_dim).
        image_fe: :class:`ImageBranch` producing (B, image_dim).
    """

    def __init__(self, cloud_fe: CloudBranch, image_fe: ImageBranch) -> None:
        super().__init__()
        self.cloud_fe = cloud_fe
        self.image_fe = image_fe
        self.output_dim = cloud_fe.output_dim + image_fe.output_dim

    def forward(self, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        """Embed a batch.

        Args:
            batch: ``coords`` IntTensor (N, 4) ``[batch_index, x, y, z]``; ``images`` (B, 3, H, W).

        Returns:
            dict ``embedding`` (B, cloud_dim + image_dim) = cat(cloud, image); ``cloud_embedding``
            (B, cloud_dim); ``image_embedding`` (B, image_dim); ``image_layer{1,2,3}`` feature maps.
        """
        images = batch["images"]
        device = next(self.image_fe.parameters()).device
        images = images.to(device)
        num_clouds = images.shape[0]
        coords = batch["coords"]
        if coords.numel() and int(coords[:, 0].max()) >= num_clouds:
            raise ValueError(
                f"coords has batch index {int(coords[:, 0].max())} but there are only {num_clouds} images"
            )
        cloud = self.cloud_fe(coords, num_clouds=num_clouds)
        image_out = self.image_fe(images)
        image = image_out.pop("embedding")
        return {"embedding": torch.cat([cloud, image], dim=1), "cloud_embedding": cloud,
                "image_embedding": image, **image_out}


def teacher_output_dim(model_cfg: ModelConfig) -> int:
    """Size of the fused teacher descriptor (cloud_dim + image_dim)."""
    return int(model_cfg.cloud_dim) + int(model_cfg.image_dim)


def build_cloud_branch(model_cfg: ModelConfig) -> CloudBranch:
    """The MinkLoc cloud branch on ``model_cfg.sparse_backend``."""
    backend = get_sparse_backend(model_cfg.sparse_backend)
    return CloudBranch(backend, cloud_dim=model_cfg.cloud_dim, planes=tuple(model_cfg.cloud_planes),
                       layers=tuple(model_cfg.cloud_layers), num_top_down=model_cfg.cloud_topdown,
                       conv0_kernel_size=model_cfg.cloud_conv0_kernel_size, gem_p=model_cfg.gem_p)


def build_teacher(model_cfg: ModelConfig) -> MinkLocMultimodal:
    """Build the teacher from a :class:`ModelConfig` (ImageNet weights loaded if configured, never downloaded).

    Raises:
        KeyError: unknown sparse backend or image backbone.
        ImportError: ``sparse_backend="minkowski"`` without MinkowskiEngine (says how to build it).
        FileNotFoundError: ``pretrained_image_weights`` names a missing file.
    """
    image = ImageBranch(model_cfg.image_backbone, out_dim=model_cfg.image_dim, gem_p=model_cfg.gem_p)
    weights = resolve_image_weights(model_cfg.pretrained_image_weights, model_cfg.image_backbone)
    if weights is not None:
        load_image_backbone_weights(image, weights)
    return MinkLocMultimodal(build_cloud_branch(model_cfg), image)


def load_reference_teacher_state_dict(model: MinkLocMultimodal,
                                      state_dict: Mapping[str, Tensor] | str | Path) -> list[str]:
    """Load an authors' teacher checkpoint (or a state_dict) into our teacher.

    Keys of parts we do not build (ResNet layer4/fc, the unused CosPlace/ConvAP/NetVLAD heads) are dropped;
    everything else must match exactly (strict). A ``module.`` prefix (DataParallel) is removed.

    Returns:
        The dropped keys.

    Raises:
        ValueError: missing/unexpected keys or shape mismatches (naming the file when given a path).
    """
    where = "state_dict"
    if isinstance(state_dict, (str, Path)):
        where = str(state_dict)
        state_dict = torch.load(state_dict, map_location="cpu", weights_only=True)
        if isinstance(state_dict, dict) and "model" in state_dict and isinstance(state_dict["model"], dict):
            state_dict = state_dict["model"]
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}
    dropped = sorted(k for k in state if k.startswith(REFERENCE_UNUSED_PREFIXES))
    state = {k: v for k, v in state.items() if k not in set(dropped)}
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{where}: teacher keys disagree; missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
    if bad:
        raise ValueError(f"{where}: shape mismatch for {bad[:5]}")
    model.load_state_dict(state, strict=True)
    return dropped
