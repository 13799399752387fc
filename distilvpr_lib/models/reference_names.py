"""The authors' names: experiment names (``0oxford__T-minklocmmcat__resnet18__img256__pc128__32_64_64__1_1_1__1
__allstgF__b128__trainteacher``, or the first release's ``T:`` form; docs/METHOD.md §9.2) and checkpoint file
names (``r1_best_ep<E>_<AR@1>.pth``), parsed into their fields."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike

_CHECKPOINT_NAME = re.compile(r"r1_best_ep(?P<epoch>\d+)_(?P<ar1>\d+(?:\.\d+)?)\.pth?$")
_EXPERIMENT_NAME = re.compile(
    r"(?P<tryid>\d*)(?P<dataset>[A-Za-z]+)__T(?P<sep>[-:])(?P<model>[A-Za-z0-9]+)"
    r"__(?P<image_fe>[A-Za-z0-9_]+?)__img(?P<image_dim>\d+)__pc(?P<cloud_dim>\d+)"
    r"__(?P<planes>\d+(?:_\d+)*)__(?P<layers>\d+(?:_\d+)*)__(?P<topdown>\d+)__allstg(?P<allstages>[FT])"
    r"(?:__S[-:](?P<student>[A-Za-z0-9_]+?)__(?P<student_dim>\d+))?__b(?P<batch>\d+)(?P<rest>(?:__.*)?)$"
)


@dataclass(frozen=True)
class ReferenceExperimentName:
    """The fields of a reference experiment name (docs/METHOD.md §9.2)."""

    raw: str
    separator: str  # "-" (current) or ":" (first release)
    tryid: int | None
    dataset: str
    model: str
    image_backbone: str
    image_dim: int
    cloud_dim: int
    cloud_planes: tuple[int, ...]
    cloud_layers: tuple[int, ...]
    cloud_topdown: int
    image_useallstages: bool
    batch_size: int
    train_teacher: bool
    student_backbone: str | None = None
    student_dim: int | None = None

    def architecture(self) -> dict[str, Any]:
        """The ModelConfig fields the name encodes."""
        return {"cloud_planes": self.cloud_planes, "cloud_layers": self.cloud_layers,
                "cloud_topdown": self.cloud_topdown, "cloud_dim": self.cloud_dim, "image_dim": self.image_dim,
                "image_backbone": self.image_backbone}


def parse_experiment_name(text: str) -> ReferenceExperimentName | None:
    """Parse a reference experiment name (``T-`` or ``T:`` form); ``None`` when ``text`` is not one.

    ``text`` may carry a prefix before the ``<tryid><dataset>__T-`` part (it is skipped).
    """
    match = _EXPERIMENT_NAME.search(text)
    if match is None:
        return None
    g = match.groupdict()
    return ReferenceExperimentName(
        raw=match.group(0), separator=g["sep"], tryid=int(g["tryid"]) if g["tryid"] else None,
        dataset=g["dataset"], model=g["model"], image_backbone=g["image_fe"], image_dim=int(g["image_dim"]),
        cloud_dim=int(g["cloud_dim"]), cloud_planes=tuple(int(v) for v in g["planes"].split("_")),
        cloud_layers=tuple(int(v) for v in g["layers"].split("_")), cloud_topdown=int(g["topdown"]),
        image_useallstages=g["allstages"] == "T", batch_size=int(g["batch"]),
        train_teacher="__trainteacher" in g["rest"], student_backbone=g["student"],
        student_dim=int(g["student_dim"]) if g["student_dim"] else None)


def experiment_name_from_path(path: PathLike) -> ReferenceExperimentName | None:
    """The experiment name in the nearest path component that holds one (``<name>/models/r1_best_...pth``)."""
    for part in reversed(Path(path).parts):
        parsed = parse_experiment_name(part)
        if parsed is not None:
            return parsed
    return None


def parse_checkpoint_name(path: PathLike) -> tuple[int, float] | None:
    """``(epoch, AR@1)`` from ``r1_best_ep<E>_<AR@1>.pth``; ``None`` for other names."""
    match = _CHECKPOINT_NAME.search(Path(path).name)
    if match is None:
        return None
    return int(match.group("epoch")), float(match.group("ar1"))


__all__ = ["ReferenceExperimentName", "experiment_name_from_path", "parse_checkpoint_name", "parse_experiment_name"]
