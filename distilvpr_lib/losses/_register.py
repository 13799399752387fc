"""The loss registry dict and its decorator (kept apart from ``registry.py`` to avoid import cycles)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)

#: Distillation loss name -> loss class (populated by :func:`register_loss`).
LOSSES: dict[str, type] = {}


def register_loss(name: str) -> Callable[[T], T]:
    """Class decorator: register a distillation loss class under ``name`` (sets ``cls.name``)."""

    def decorate(cls: T) -> T:
        if name in LOSSES:
            raise KeyError(f"loss {name!r} registered twice ({LOSSES[name].__qualname__} and {cls.__qualname__})")
        cls.name = name  # type: ignore[attr-defined]
        LOSSES[name] = cls
        return cls

    return decorate


def get_loss(name: str) -> type:
    """Look a loss class up; unknown names raise ``KeyError`` listing the known ones."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known losses: {sorted(LOSSES)}")
    return LOSSES[name]
