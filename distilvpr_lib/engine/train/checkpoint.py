"""Atomic checkpoints and weight files.

A *training checkpoint* (``checkpoints/last.pt``) holds everything needed to continue a run
exactly: model, optimiser and scheduler states, the RNG states of Python / NumPy / torch
(:mod:`distilvpr_lib.engine.train.seeding`), the batch sampler's state, the epoch just finished,
the best validation metric so far and the history of per-epoch metrics. It is written after
every epoch through :func:`distilvpr_lib.data.files.atomic_write`, so a crash while writing
leaves the previous checkpoint intact.

A *weights file* (``teacher.pt`` / ``student.pt``, ``checkpoints/best.pt``) is a bare
``state_dict`` (as the reference's released ``.pth`` files), also written atomically.

Everything is loaded with ``torch.load(weights_only=True)``: nothing in a file is executed. A file
that cannot be read so is reported as a :class:`CheckpointError` naming it (never with torch's advice
to load it with ``weights_only=False``); :func:`state_dict_mismatches` / :func:`check_state_dict`
compare a state_dict's keys and shapes with what a model expects and name the first differences.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from distilvpr_lib.data.files import atomic_write
from distilvpr_lib.errors import (  # noqa: F401 - CheckpointError / MissingCheckpointError re-exported
    CheckpointError,
    MissingCheckpointError,
    describe_torch_load_error,
)

PathLike = str | os.PathLike

#: Format tag stored in every training checkpoint.
CHECKPOINT_FORMAT: str = "distilvpr-checkpoint/1"
#: File names inside a run's ``checkpoints/`` folder.
#: The run folder's sub-folder that holds the resumable checkpoints while a run can resume.
CHECKPOINT_DIR_NAME: str = "checkpoints"
LAST_CHECKPOINT_NAME: str = "last.pt"
BEST_WEIGHTS_NAME: str = "best.pt"


def save_checkpoint(path: PathLike, state: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically (the old file survives any failure mid-write).

    Args:
        path: destination, usually ``<run>/checkpoints/last.pt``.
        state: plain values and tensors (see :class:`distilvpr_lib.engine.train.loop.Trainer`);
            a ``format`` key is added.

    Returns:
        The path written.
    """
    path = Path(path)
    payload = dict(state)
    payload["format"] = CHECKPOINT_FORMAT
    _save_atomically(path, payload)
    return path


def _save_atomically(path: Path, obj: Any) -> None:
    """``torch.save`` into memory, then one atomic write: a full disk is an ``OSError`` that
    :func:`~distilvpr_lib.data.files.atomic_write` reports as "disk full" with the bytes needed."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    with atomic_write(path, "wb", size_hint=data.nbytes) as handle:
        handle.write(data)


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint written by :func:`save_checkpoint` (``weights_only=True``).

    Raises:
        MissingCheckpointError: no such file (a FileNotFoundError).
        CheckpointError: unreadable file or not a DistilVPR training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError("checkpoint not found", path=path)
    state = _torch_load(path, map_location, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"not a training checkpoint (expected format {CHECKPOINT_FORMAT!r})", path=path,
                              hint="delete it, or run with --no-resume to start over")
    return state


def _torch_load(path: Path, map_location: str | torch.device, what: str) -> Any:
    """``torch.load(weights_only=True)``; any failure becomes a one-line CheckpointError naming ``path``."""
    if path.stat().st_size == 0:
        raise CheckpointError(f"empty {what} file (0 bytes)", path=path,
                              hint="it was cut short: delete it and re-create it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name, without torch's advice
        raise CheckpointError(f"cannot read {what}: {describe_torch_load_error(exc)}", path=path,
                              hint="re-create it, or replace it with a good copy") from exc


def save_weights(path: PathLike, state_dict: dict[str, torch.Tensor]) -> Path:
    """Write a bare ``state_dict`` atomically (tensors moved to CPU first)."""
    path = Path(path)
    cpu_state = {k: v.detach().cpu() if torch.is_tensor(v) else v for k, v in state_dict.items()}
    _save_atomically(path, cpu_state)
    return path


def load_weights(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a bare ``state_dict`` (``weights_only=True``); accepts a training checkpoint too.

    Raises:
        MissingCheckpointError: no such file (a FileNotFoundError).
        CheckpointError: unreadable, or not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpointError("weights file not found", path=path)
    state = _torch_load(path, map_location, "weights")
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT:
        state = state.get("model")
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"expected a state_dict (a mapping of parameter names to tensors), "
                              f"found {type(state).__name__}", path=path)
    bad = [k for k, v in state.items() if not torch.is_tensor(v)]
    if bad:
        raise CheckpointError(f"not a state_dict: entry {bad[0]!r} is a {type(state[bad[0]]).__name__}, "
                              "not a tensor", path=path)
    return state


#: How many mismatching keys a state_dict error lists.
MAX_LISTED_MISMATCHES: int = 5


def state_dict_mismatches(found: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Differences between a state_dict and what a model expects, one short phrase each.

    Args:
        found: the file's state_dict (name -> tensor).
        expected: the model's state_dict, or name -> shape (``torch.Size`` / tuple).

    Returns:
        ``["missing key 'a.weight' (expected shape (8, 3))", "unexpected key 'b'", "'c.weight' has shape
        (4,), expected (8,)", ...]`` — missing keys first, then shape differences, then unexpected keys;
        empty when the keys and shapes agree.
    """
    def shape_of(value: Any) -> tuple[int, ...]:
        return tuple(value.shape) if hasattr(value, "shape") else tuple(value)

    out = [f"missing key {k!r} (expected shape {shape_of(v)})" for k, v in expected.items() if k not in found]
    out += [f"{k!r} has shape {shape_of(found[k])}, expected {shape_of(v)}"
            for k, v in expected.items() if k in found and shape_of(found[k]) != shape_of(v)]
    out += [f"unexpected key {k!r}" for k in found if k not in expected]
    return out


def check_state_dict(found: Mapping[str, Any], expected: Mapping[str, Any], path: PathLike,
                     hint: str | None = None) -> None:
    """Raise a one-line :class:`CheckpointError` naming ``path`` and the first mismatches, if any.

    Raises:
        CheckpointError: keys or shapes differ (the message counts them and lists the first
            :data:`MAX_LISTED_MISMATCHES`).
    """
    problems = state_dict_mismatches(found, expected)
    if problems:
        shown = "; ".join(problems[:MAX_LISTED_MISMATCHES])
        more = f"; ... {len(problems) - MAX_LISTED_MISMATCHES} more" if len(problems) > MAX_LISTED_MISMATCHES else ""
        raise CheckpointError(f"does not fit the model of its config: {len(problems)} mismatch(es): {shown}{more}",
                              path=path, hint=hint or "is it the weights file of this config.json? re-create it, "
                              "or pass the folder it was trained with")


def load_state_dict_checked(model: torch.nn.Module, path: PathLike, map_location: str | torch.device = "cpu",
                            hint: str | None = None) -> torch.nn.Module:
    """Load a weights file into ``model`` strictly; a mismatch is a one-line CheckpointError naming the file.

    Returns:
        ``model`` (loaded in place).
    """
    state = load_weights(path, map_location=map_location)
    check_state_dict(state, model.state_dict(), path, hint=hint)
    model.load_state_dict(state)
    return model

