"""Atomic checkpoints and weight files.

A *training checkpoint* (``checkpoints/last.pt``) holds everything needed to continue a run
exactly: model, optimiser and scheduler states, the RNG states of Python / NumPy / torch
(:mod:`distilvpr_lib.engine.seeding`), the batch sampler's state, the epoch just finished,
the best validation metric so far and the history of per-epoch metrics. It is written after
every epoch through :func:`distilvpr_lib.data.formats.atomic_write`, so a crash while writing
leaves the previous checkpoint intact.

A *weights file* (``teacher.pt`` / ``student.pt``, ``checkpoints/best.pt``) is a bare
``state_dict`` (as the reference's released ``.pth`` files), also written atomically.

Everything is loaded with ``torch.load(weights_only=True)``: nothing in a file is executed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from distilvpr_lib.data.formats import atomic_write

PathLike = str | os.PathLike

#: Format tag stored in every training checkpoint.
CHECKPOINT_FORMAT: str = "distilvpr-checkpoint/1"
#: File names inside a run's ``checkpoints/`` folder.
LAST_CHECKPOINT_NAME: str = "last.pt"
BEST_WEIGHTS_NAME: str = "best.pt"


class CheckpointError(RuntimeError):
    """A checkpoint or weights file is unreadable or does not fit; the message names the file."""


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (the old file survives any failure mid-write).

    Args:
        path: destination, usually ``<run>/checkpoints/last.pt``.
        state: plain values and tensors (see :class:`distilvpr_lib.engine.loop.Trainer`);
            a ``format`` key is added.

    Returns:
        The path written.
    """
    path = Path(path)
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable file or not a DistilVPR training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    return state


def save_weights(path: PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a bare ``state_dict`` atomically (tensors moved to CPU first)."""
    path = Path(path)
    cpu_state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}
    with atomic_write(path, "wb") as handle:
        torch.save(cpu_state, handle)
    return path


def load_weights(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a bare ``state_dict`` (``weights_only=True``); accepts a training checkpoint too.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of parameter names to tensors)")
    return state


def file_sha256(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (identifies a teacher's weights in its cache metadata)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
