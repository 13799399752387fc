"""Where the engine runs: device names, the mixed-precision dtype, float32 islands under autocast,
and moving a batch to a device.

Used by the training loop (:mod:`~distilvpr_lib.engine.train.loop`), the run pipelines and
:mod:`~distilvpr_lib.engine.train.distributed`; it imports nothing else from the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; otherwise ``torch.device(name)``.

    Raises:
        ConfigValueError: (an OptionError, exit status 2) an unknown device name, or a CUDA device asked for
            where CUDA is not available (:func:`distilvpr_lib.config.check_device_name`).
    """
    from distilvpr_lib.config_checks import check_device_name

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(name)
    return torch.device(name)


#: ``TrainConfig.amp_dtype`` values.
AMP_DTYPES: dict[str, torch.dtype | None] = {"float16": torch.float16, "bfloat16": torch.bfloat16, "auto": None}


def resolve_amp_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """Autocast dtype for ``TrainConfig.amp_dtype``: ``"auto"`` = bfloat16 on the CPU and on CUDA devices
    that support it, else float16.

    Raises:
        KeyError: unknown name (lists the known ones).
    """
    if name not in AMP_DTYPES:
        raise KeyError(f"unknown train.amp_dtype {name!r}; known: {sorted(AMP_DTYPES)}")
    dtype = AMP_DTYPES[name]
    if dtype is None:
        device = torch.device(device)
        supported = device.type == "cpu" or (
            device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        dtype = torch.bfloat16 if supported else torch.float16
    return dtype


class _Float32Forward:
    """A module's bound ``forward`` run with autocast disabled (installed as an instance attribute)."""

    def __init__(self, forward: Callable[..., Any]) -> None:
        self.forward = forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with contextlib.ExitStack() as stack:
            for device_type in ("cuda", "cpu"):
                if torch.is_autocast_enabled(device_type):
                    stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
            return self.forward(*args, **kwargs)


def keep_float32_under_autocast(model: nn.Module) -> list[str]:
    """Make the sparse cloud branches of ``model`` run in float32 inside autocast regions (in place).

    The sparse-convolution backends do not support autocast (the torch backend's scatter-add mixes the
    dtypes autocast gives its matrix products); the cloud branch is small next to the image branch, so
    mixed precision keeps it in float32 and autocasts the rest. Idempotent; parameters and state-dict
    keys are untouched.

    Returns:
        The names of the wrapped submodules (``["cloud_fe"]`` for the teacher, ``[]`` for the student).
    """
    from distilvpr_lib.models.sparse import CloudBranch

    wrapped = []
    for name, module in model.named_modules():
        if isinstance(module, CloudBranch):
            if not isinstance(module.__dict__.get("forward"), _Float32Forward):
                module.forward = _Float32Forward(module.forward)  # type: ignore[method-assign]
            wrapped.append(name)
    return wrapped



def move_to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """Move every tensor of a batch dict to ``device`` (``non_blocking``); other values are kept."""
    non_blocking = device.type == "cuda"
    return {k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()}


__all__ = ["AMP_DTYPES", "keep_float32_under_autocast", "move_to_device", "resolve_amp_dtype", "resolve_device"]
