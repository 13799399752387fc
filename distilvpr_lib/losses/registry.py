"""Registry of the distillation losses: ``LOSSES`` name -> loss class.

Classes register themselves with :func:`register_loss`; importing this module imports every
loss module so the dict is complete. Each class documents its formula and paper.
"""

from __future__ import annotations

from . import baselines, relational  # noqa: F401  (import registers the losses)
from ._register import LOSSES, get_loss, register_loss

__all__ = ["LOSSES", "get_loss", "register_loss"]
