"""Image branches: a torchvision ResNet truncated after ``layer3`` -> 1x1 conv -> learnable GeM.

Used by the teacher (``ResNetFPNv2`` in the reference, 256-d; docs/METHOD.md §3.1) and by the student
(``GeneralImageFE``, 384-d; §3.2). ImageNet weights are optional and only ever read from a local file
(:func:`load_image_backbone_weights`); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distilvpr_lib.config import HUB_WEIGHTS

#: Torchvision's file names of the ImageNet (IMAGENET1K_V1) weights, as found in the torch hub cache.
IMAGENET_WEIGHT_FILES: dict[str, str] = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
}
#: Value of ``ModelConfig.pretrained_image_weights`` meaning "the torch hub cache file, if present".
HUB_CACHE = HUB_WEIGHTS


def _resnet_factories() -> dict[str, Callable[..., nn.Module]]:
    import torchvision  # local import: keep module import light

    return {"resnet18": torchvision.models.resnet18, "resnet34": torchvision.models.resnet34}


IMAGE_BACKBONES: tuple[str, ...] = ("resnet18", "resnet34")


class ImageGeM(nn.Module):
    """GeM over the spatial grid: (B, C, H, W) -> (B, C); ``p`` learnable, shape (1,)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        pooled = F.avg_pool2d(x.clamp(min=self.eps).pow(self.p), (x.shape[-2], x.shape[-1]))
        return pooled.pow(1.0 / self.p).flatten(1)


def truncated_resnet(name: str) -> nn.Module:
    """A torchvision ResNet with random weights, ``layer4``/``avgpool``/``fc`` removed (they are unused).

    Raises:
        KeyError: unknown backbone name (lists the known ones).
    """
    factories = _resnet_factories()
    if name not in factories:
        raise KeyError(f"unknown image backbone {name!r}; known backbones: {sorted(factories)}")
    model = factories[name](weights=None)
    del model.layer4, model.avgpool, model.fc
    return model


class ImageBranch(nn.Module):
    """ResNet up to ``layer3`` (256 channels, stride 16) -> Conv2d(256, out_dim, 1) -> ImageGeM.

    Submodule names follow the reference (``model``, ``conv1x1``, ``image_gem``).

    Args:
        backbone: ``"resnet18"`` or ``"resnet34"``.
        out_dim: descriptor size.
        gem_p: initial GeM exponent.
    """

    def __init__(self, backbone: str = "resnet18", out_dim: int = 256, gem_p: float = 3.0) -> None:
        super().__init__()
        self.backbone_name = backbone
        self.output_dim = out_dim
        self.model = truncated_resnet(backbone)
        self.conv1x1 = nn.Conv2d(256, out_dim, kernel_size=1)
        self.image_gem = ImageGeM(p=gem_p)

    def forward(self, images: Tensor) -> dict[str, Tensor]:
        """(B, 3, H, W) normalised images -> dict ``embedding`` (B, out_dim), ``image_layer{1,2,3}`` maps."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(images))))
        layer1 = m.layer1(x)
        layer2 = m.layer2(layer1)
        layer3 = m.layer3(layer2)
        embedding = self.image_gem(self.conv1x1(layer3))
        return {"embedding": embedding, "image_layer1": layer1, "image_layer2": layer2, "image_layer3": layer3}


def resolve_image_weights(spec: str | None, backbone: str) -> Path | None:
    """Turn ``ModelConfig.pretrained_image_weights`` into a local file, or ``None`` (train from scratch).

    ``spec`` is ``None`` (no pretrained weights), a path to a ``.pth`` file, or ``"hub"``: torchvision's
    cached file (``<torch hub dir>/checkpoints/resnet18-f37072fd.pth``) if it exists.

    Raises:
        FileNotFoundError: the file is missing (the message says how to provide it; nothing is downloaded).
    """
    if spec is None or spec == "":
        return None
    expected = IMAGENET_WEIGHT_FILES.get(backbone, f"{backbone}-<hash>.pth")
    hint = (
        f"ImageNet weights for {backbone} are never downloaded by this project. Get torchvision's file "
        f"{expected} (https://download.pytorch.org/models/{expected}) on a machine with internet access and "
        f"either set ModelConfig.pretrained_image_weights to its path, or put it in "
        f"{Path(torch.hub.get_dir()) / 'checkpoints'} and use pretrained_image_weights='{HUB_CACHE}'. "
        "Or set pretrained_image_weights=None to train from scratch."
    )
    if spec == HUB_CACHE:
        path = Path(torch.hub.get_dir()) / "checkpoints" / expected
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not in the torch hub cache. {hint}")
        return path
    path = Path(spec).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained image weights file not found. {hint}")
    return path


def load_image_backbone_weights(module: nn.Module, path: str | Path) -> list[str]:
    """Load torchvision ResNet weights from a local file into an image branch (never downloads).

    Args:
        module: an :class:`ImageBranch` (weights go to ``module.model``) or a bare (truncated) ResNet.
        path: a torchvision ResNet ``state_dict`` file (keys ``conv1.weight``, ``layer1.0.conv1.weight``...),
            optionally nested under ``"state_dict"`` or prefixed with ``model.``/``module.``.

    Returns:
        The keys of the file that were not used (``layer4.*``, ``fc.*`` of the full ResNet).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file lacks weights of the used layers, or shapes disagree (names the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: pretrained image weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - report which file is broken (never torch's weights_only advice)
        from distilvpr_lib.errors import describe_torch_load_error

        raise ValueError(f"{path}: cannot read a torch state_dict: {describe_torch_load_error(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (dict of tensors), got {type(state).__name__}")
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    target = module.model if isinstance(module, ImageBranch) else module
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(f"{path}: not a matching ResNet state_dict; missing {len(missing)} keys, e.g. {missing[:3]}")
    bad = [k for k in own if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise ValueError(
            f"{path}: shape mismatch for {bad[:3]} (file {tuple(state[bad[0]].shape)} vs model "
            f"{tuple(own[bad[0]].shape)}): wrong backbone?"
        )
    target.load_state_dict({k: state[k] for k in own}, strict=True)
    return sorted(k for k in state if k not in own)
