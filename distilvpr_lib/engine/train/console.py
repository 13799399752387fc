"""Console lines of the run pipelines (tqdm-safe: they do not break progress bars)."""

from __future__ import annotations


def say(message: str, enabled: bool = True) -> None:
    """Print ``message`` through :func:`distilvpr_lib.progress.write` when ``enabled`` (the pipelines pass ``progress``)."""
    if enabled:
        from distilvpr_lib.progress import write

        write(message)


__all__ = ["say"]
