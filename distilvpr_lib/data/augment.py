"""Training augmentations of clouds and images (docs/METHOD.md §2.5), each switchable.

Cloud augmentations act on a ``(P, 3)`` float32 tensor and draw from torch's global RNG (so a
``DataLoader`` seeds them per worker). The constants are the reference method's values.

Oxford order: rotation (±5° about z), flip (x with p 0.25, else y with p 0.25), jitter
(N(0, 0.001²) clipped to ±0.002), remove random points (up to 10 %, moved to the origin), random
translation (N(0, 0.01²) per axis), remove random block (p 0.4). Boreas: jitter, remove points, block.

Images: ``ColorJitter(b, c, s, hue)`` -> ``ToTensor`` -> ``RandomErasing(p 0.5, value 0)`` ->
``Normalize(ImageNet)`` for training; ``ToTensor`` -> ``Normalize`` for evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from distilvpr_lib.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig, Layout

# Reference constants (docs/METHOD.md §2.5).
ROTATION_MAX_DEGREES = 5.0
FLIP_PROBABILITIES = (0.25, 0.25, 0.0)
JITTER_SIGMA = 0.001
JITTER_CLIP = 0.002
REMOVE_POINTS_MAX_FRACTION = 0.1
TRANSLATION_SIGMA = 0.01
BLOCK_PROBABILITY = 0.4
BLOCK_SCALE = (0.02, 0.33)
BLOCK_RATIO = (0.3, 3.3)
ERASING_PROBABILITY = 0.5
ERASING_SCALE = (0.1, 0.4)
ERASING_RATIO = (0.3, 3.3)


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


class RandomRotationZ:
    """Rotate about the z axis by θ ~ U(−max_degrees, +max_degrees)."""

    def __init__(self, max_degrees: float = ROTATION_MAX_DEGREES) -> None:
        self.max_degrees = max_degrees

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        theta = math.radians(_uniform(-self.max_degrees, self.max_degrees))
        c, s = math.cos(theta), math.sin(theta)
        rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=points.dtype)
        return points @ rotation.T


class RandomFlip:
    """With prob p[0] negate x, else with prob p[1] negate y, else with prob p[2] negate z."""

    def __init__(self, probabilities: Sequence[float] = FLIP_PROBABILITIES) -> None:
        if len(probabilities) != 3 or sum(probabilities) > 1:
            raise ValueError(f"flip probabilities must be 3 values summing to <= 1, got {probabilities}")
        self.probabilities = tuple(float(p) for p in probabilities)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        r = float(torch.rand(()))
        threshold = 0.0
        for axis, p in enumerate(self.probabilities):
            threshold += p
            if r < threshold:
                points = points.clone()
                points[:, axis] = -points[:, axis]
                break
        return points


class JitterPoints:
    """Add per-point N(0, sigma²) noise clipped to ±clip."""

    def __init__(self, sigma: float = JITTER_SIGMA, clip: float = JITTER_CLIP) -> None:
        self.sigma, self.clip = sigma, clip

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        noise = torch.clamp(self.sigma * torch.randn_like(points), -self.clip, self.clip)
        return points + noise


class RemoveRandomPoints:
    """Move floor(P·r), r ~ U(0, max_fraction), random points to the origin."""

    def __init__(self, max_fraction: float = REMOVE_POINTS_MAX_FRACTION) -> None:
        self.max_fraction = max_fraction

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        count = int(math.floor(len(points) * _uniform(0.0, self.max_fraction)))
        if count == 0:
            return points
        points = points.clone()
        points[torch.randperm(len(points))[:count]] = 0.0
        return points


class RandomTranslation:
    """Add one N(0, sigma²) offset per axis to every point."""

    def __init__(self, sigma: float = TRANSLATION_SIGMA) -> None:
        self.sigma = sigma

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        return points + self.sigma * torch.randn(1, 3, dtype=points.dtype)


class RemoveRandomBlock:
    """With probability p, move the points strictly inside a random xy rectangle to the origin.

    Rectangle area ~ U(scale)·A of the cloud's xy bounding box, aspect ratio ~ U(ratio),
    h = √(area·ratio), w = √(area/ratio), placed uniformly so it fits in the box when it can.
    """

    def __init__(self, p: float = BLOCK_PROBABILITY, scale: tuple[float, float] = BLOCK_SCALE,
                 ratio: tuple[float, float] = BLOCK_RATIO) -> None:
        self.p, self.scale, self.ratio = p, scale, ratio

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return points
        lo = points[:, :2].min(dim=0).values
        hi = points[:, :2].max(dim=0).values
        span = hi - lo
        area = float(span[0] * span[1]) * _uniform(*self.scale)
        aspect = _uniform(*self.ratio)
        h, w = math.sqrt(area * aspect), math.sqrt(area / aspect)
        x0 = float(lo[0]) + _uniform(0.0, 1.0) * (float(span[0]) - w)
        y0 = float(lo[1]) + _uniform(0.0, 1.0) * (float(span[1]) - h)
        inside = (points[:, 0] > x0) & (points[:, 0] < x0 + w) & (points[:, 1] > y0) & (points[:, 1] < y0 + h)
        if not bool(inside.any()):
            return points
        points = points.clone()
        points[inside] = 0.0
        return points


#: Cloud augmentation factories, by name, in the reference order.
CLOUD_AUGMENTATIONS: dict[str, Callable[[], Callable[[torch.Tensor], torch.Tensor]]] = {
    "rotation": RandomRotationZ,
    "flip": RandomFlip,
    "jitter": JitterPoints,
    "remove_points": RemoveRandomPoints,
    "translation": RandomTranslation,
    "remove_block": RemoveRandomBlock,
}
#: Which augmentations each layout uses by default (docs/METHOD.md §2.5: Boreas has no geometric ones).
LAYOUT_CLOUD_AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    Layout.OXFORD.value: ("rotation", "flip", "jitter", "remove_points", "translation", "remove_block"),
    Layout.BOREAS.value: ("jitter", "remove_points", "remove_block"),
}


class Compose:
    """Apply callables in order."""

    def __init__(self, steps: Sequence[Callable[[torch.Tensor], torch.Tensor]], names: Sequence[str] = ()) -> None:
        self.steps, self.names = list(steps), list(names)

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        for step in self.steps:
            points = step(points)
        return points

    def __repr__(self) -> str:
        return f"Compose({self.names or self.steps})"


def build_cloud_augmentation(layout: str = Layout.OXFORD.value, enabled: Iterable[str] | None = None) -> Compose:
    """The training cloud augmentation of a layout.

    Args:
        layout: ``"oxford"`` or ``"boreas"`` (picks the default set).
        enabled: names to use instead of the layout's default (kept in the reference order);
            ``()`` = no augmentation.

    Raises:
        KeyError: unknown layout or augmentation name (the message lists the known ones).
    """
    if layout not in LAYOUT_CLOUD_AUGMENTATIONS:
        raise KeyError(f"unknown layout {layout!r}; known layouts: {sorted(LAYOUT_CLOUD_AUGMENTATIONS)}")
    names = LAYOUT_CLOUD_AUGMENTATIONS[layout] if enabled is None else tuple(enabled)
    unknown = [n for n in names if n not in CLOUD_AUGMENTATIONS]
    if unknown:
        raise KeyError(f"unknown cloud augmentation(s) {unknown}; known: {list(CLOUD_AUGMENTATIONS)}")
    ordered = [n for n in CLOUD_AUGMENTATIONS if n in names]
    return Compose([CLOUD_AUGMENTATIONS[n]() for n in ordered], ordered)


def build_image_transform(train: bool, color_jitter: bool = True, random_erasing: bool = True,
                          bcs_aug_rate: float | None = None, hue_aug_rate: float | None = None) -> Callable:
    """Image transform: PIL RGB -> normalised FloatTensor (3, H, W).

    Training: ColorJitter (if ``color_jitter``) -> ToTensor -> RandomErasing(p 0.5, scale (0.1, 0.4),
    ratio (0.3, 3.3), value 0) (if ``random_erasing``, before normalising so erased pixels are black)
    -> Normalize(ImageNet). Evaluation (``train=False``): ToTensor -> Normalize.
    ``bcs_aug_rate`` / ``hue_aug_rate`` default to ``DataConfig``'s.
    """
    from torchvision import transforms

    defaults = DataConfig()
    bcs_aug_rate = defaults.bcs_aug_rate if bcs_aug_rate is None else bcs_aug_rate
    hue_aug_rate = defaults.hue_aug_rate if hue_aug_rate is None else hue_aug_rate

    steps: list[Callable] = []
    if train and color_jitter:
        steps.append(transforms.ColorJitter(brightness=bcs_aug_rate, contrast=bcs_aug_rate,
                                            saturation=bcs_aug_rate, hue=hue_aug_rate))
    steps.append(transforms.ToTensor())
    if train and random_erasing:
        steps.append(transforms.RandomErasing(p=ERASING_PROBABILITY, scale=ERASING_SCALE, ratio=ERASING_RATIO, value=0))
    steps.append(transforms.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD))
    return transforms.Compose(steps)
