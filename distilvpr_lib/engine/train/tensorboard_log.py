"""TensorBoard scalars of a training run (``<run folder>/tensorboard``).

Tags: ``train/loss/<term>`` and ``train/active_fraction`` per optimiser step; ``epoch/loss/<term>``,
``epoch/<stat>``, ``lr/<group>`` and ``epoch`` per epoch; ``val/AR@N`` per validation. Non-finite
values and ``None`` are not written. Only rank 0 writes in distributed runs (the loop passes
``enabled=False`` elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ScalarLog:
    """A lazily opened ``SummaryWriter``; every method is a no-op while it is closed or disabled.

    Args:
        log_dir: the event-file folder (created by TensorBoard when opened).
        enabled: ``False`` never opens a writer.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True) -> None:
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer: Any = None

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    def open(self, purge_step: int | None = None) -> None:
        """Open the writer; ``purge_step`` drops events at and after that step (a resumed run)."""
        if not self.enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge_step)

    def scalar(self, tag: str, value: float | None, step: int) -> None:
        """One scalar at ``step`` (skipped when ``value`` is None or not finite)."""
        if self._writer is not None and value is not None and math.isfinite(float(value)):
            self._writer.add_scalar(tag, float(value), step)

    def epoch(self, record: Mapping[str, Any], step: int) -> None:
        """An epoch record of :class:`~distilvpr_lib.engine.train.loop.TrainingHistory`: mean losses, stats,
        learning rates and the epoch number."""
        for name, value in record["losses"].items():
            self.scalar(f"epoch/loss/{name}", value, step)
        for name, value in record["stats"].items():
            self.scalar(f"epoch/{name}", value, step)
        for name, lr in record["lr"].items():
            self.scalar(f"lr/{name}", lr, step)
        self.scalar("epoch", record["epoch"], step)

    def validation(self, summary: Mapping[str, Any], step: int) -> None:
        """The ``AR@N`` entries of a validation summary as ``val/AR@N``."""
        for name, value in summary.items():
            if name.startswith("AR@"):
                self.scalar(f"val/{name}", value, step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


__all__ = ["ScalarLog"]
